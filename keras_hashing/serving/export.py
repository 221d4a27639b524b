"""Export a trained encoder as a SavedModel in TF Serving's layout.

    saved_models/NAME/metadata.json      method, bits, input shape, dataset, metrics
    saved_models/NAME/1/saved_model.pb   version 1 (TF Serving serves the highest)
    saved_models/NAME/1/variables/
    saved_models/NAME/1/assets/

Two named signatures (not Keras' anonymous ``args_0`` / ``output_0``):

* ``serving_default``: ``images`` float32 [None, H, W, C] raw pixels 0..255 ->
  ``codes`` uint8 [None, ceil(K/8)] (``np.packbits`` order), ``bits`` int8 [None, K]
  (0/1), ``embedding`` float32 [None, K] (the continuous code), ``signed`` float32
  [None, K] (the code whose signs are the bits: asymmetric re-ranking scores with it);
* ``encode_bytes``: ``image_bytes`` string [None] (encoded PNG/JPEG/GIF/BMP) -> the same
  outputs; decoding and resizing to H x W happen inside the graph, so a REST client can
  send ``{"b64": ...}``.

Rescaling and the method's own binarisation (SSDH's 0.5 threshold, ...) are inside
the graph. A version folder is written under a temporary name and renamed into place,
so TF Serving, which polls the folder, never loads a half-written version.

Example:
    >>> path = export_run("runs/d48", base="saved_models", name="digits")  # doctest: +SKIP
    >>> path                                                               # doctest: +SKIP
    'saved_models/digits/1'
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_hashing import __version__
from keras_hashing.codes import code_bytes
from keras_hashing.errors import HashingError, OutputError
from keras_hashing.fileio import OutputLock, check_output_dir, write_json
from keras_hashing.serving.client import (BYTES_SIGNATURE, MODEL_INFO_SIGNATURE,
                                          SERVING_SIGNATURE)
from keras_hashing.data.images import decode_image

METADATA_FILE = "metadata.json"
OUTPUTS = ["codes", "bits", "embedding", "signed"]


def pack_bits_tf(bits, num_bits):
    """Pack 0/1 int bits (N, K) into uint8 (N, ceil(K/8)) exactly as ``np.packbits``."""
    bits = tf.cast(bits, tf.int32)
    nbytes = (num_bits + 7) // 8
    bits = tf.pad(bits, [[0, 0], [0, nbytes * 8 - num_bits]])
    groups = tf.reshape(bits, [-1, nbytes, 8])
    weights = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.int32)
    return tf.cast(tf.reduce_sum(groups * weights, axis=-1), tf.uint8)


def _outputs(model, images):
    code = model(images, training=False)["code"]
    bits = tf.cast(model.binarize(code), tf.int8)
    return {"codes": pack_bits_tf(bits, model.bits), "bits": bits,
            "embedding": tf.cast(code, tf.float32),
            # the code whose signs are the bits: what asymmetric re-ranking scores with
            "signed": tf.cast(model.signed_code(tf.cast(code, tf.float32)), tf.float32)}


def build_archive(model, model_sha256="") -> keras.export.ExportArchive:
    """An ExportArchive with the two documented signatures for a HashingModel, and
    ``model_info``, which answers the digest of the run's model.keras (empty when the
    model came from no run), so an index can be checked against a served model through
    TF Serving as it is in process."""
    h, w, c = model.image_shape
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve_images(images):
        return _outputs(model, images)

    def serve_bytes(image_bytes):
        def decode(data):
            # The same decode and resize as `index build --images`, so served codes of an
            # image file equal the ones in an index built from that file.
            img = tf.cast(decode_image(data, (h, w), c), tf.float32)
            return tf.ensure_shape(img, (h, w, c))

        images = tf.map_fn(decode, image_bytes,
                           fn_output_signature=tf.TensorSpec((h, w, c), tf.float32))
        return _outputs(model, images)

    archive.add_endpoint(SERVING_SIGNATURE, serve_images,
                         [tf.TensorSpec((None, h, w, c), tf.float32, name="images")])
    archive.add_endpoint(BYTES_SIGNATURE, serve_bytes,
                         [tf.TensorSpec((None,), tf.string, name="image_bytes")])

    def model_info(probe):  # one digest per probe row: TF Serving predicts on rows
        return {"model_sha256": tf.fill(tf.shape(probe), tf.constant(str(model_sha256)))}

    archive.add_endpoint(MODEL_INFO_SIGNATURE, model_info,
                         [tf.TensorSpec((None,), tf.int32, name="probe")])
    return archive


# TF Serving parses a version folder's name as an int64
VERSION_LIMIT = 2**63
# held by the export writing a model folder (and removed when it ends); TF Serving ignores
# names that are not numbers
EXPORT_LOCK = ".export.lock"


def next_version(model_dir) -> int:
    """1 + the highest integer version folder under ``model_dir`` (1 when none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def export_model(model, base, name, version=None, metadata=None) -> str:
    """Write ``base/name/version`` (atomically) and ``base/name/metadata.json``."""
    if not name or os.sep in name or name.startswith("."):
        raise HashingError(f"model name {name!r} must be a plain folder name")
    model_dir = os.path.join(base, name)
    if version is not None and not 1 <= int(version) < VERSION_LIMIT:
        raise HashingError(f"version must be an integer from 1 to {VERSION_LIMIT - 1:,} (TF "
                           f"Serving reads versions as int64), got {version}")
    created = _first_missing(model_dir)
    check_output_dir(model_dir)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{model_dir}: cannot create the model folder ({e.strerror})") from None
    # One export of a model folder at a time: a second is refused in one line instead of
    # racing the first for the same version number.
    try:
        lock = OutputLock(os.path.join(model_dir, EXPORT_LOCK), model_dir, remove=True)
    except OutputError:
        _remove(created)
        raise
    try:
        version = next_version(model_dir) if version is None else int(version)
        final = os.path.join(model_dir, str(version))
        if os.path.lexists(final):
            raise HashingError(f"{final} already exists; TF Serving versions are immutable, "
                               f"pass another --version (next free: {next_version(model_dir)})")
        tmp = tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_dir)
        try:
            export_dir = os.path.join(tmp, "export")
            build_archive(model, (metadata or {}).get("model_sha256", "")).write_out(
                export_dir, verbose=False)
            os.makedirs(os.path.join(export_dir, "assets"), exist_ok=True)
            os.replace(export_dir, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        _remove(created)  # the folders this export made, and nothing else
        raise
    finally:
        lock.release()
    meta = {"name": name, "latest_version": version, "method": model.method_name,
            "bits": model.bits, "code_bytes": code_bytes(model.bits),
            "input_shape": list(model.image_shape), "input_dtype": "float32",
            "signatures": {SERVING_SIGNATURE: {"inputs": ["images"], "outputs": OUTPUTS},
                           BYTES_SIGNATURE: {"inputs": ["image_bytes"], "outputs": OUTPUTS}},
            "keras_hashing_version": __version__, **(metadata or {})}
    write_json(os.path.join(model_dir, METADATA_FILE), meta)
    return final


def _remove(created) -> None:
    if created:
        shutil.rmtree(created, ignore_errors=True)


def _first_missing(path):
    """The outermost folder of ``path`` that does not exist yet, or None."""
    path, missing = os.path.abspath(path), None
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing, path = path, os.path.dirname(path)
    return missing


def export_run(run_dir, base="saved_models", name=None, version=None) -> str:
    """Export the model of a run directory; metadata carries its dataset and metrics."""
    from keras_hashing.runs import load_run, model_digest

    run = load_run(run_dir)
    name = name or os.path.basename(os.path.normpath(run_dir))
    q = run.metrics.get("query", {})
    extra = {"dataset": run.config.get("dataset"), "protocol": run.config.get("protocol"),
             "run": os.path.abspath(run_dir), "model_sha256": model_digest(run_dir),
             "metrics": {k: q[k] for k in ("map_all", "map_1000", "p_r2") if k in q}}
    return export_model(run.model, base, name, version, extra)


class SavedModelEncoder:
    """The ``encoders.Encoder`` of an exported SavedModel, in this process (imports only
    TensorFlow): ``encode(images)`` -> packed uint8 codes; ``encode_bytes(list_of_bytes)``
    likewise, through the export's own decoding signature.
    """

    def __init__(self, path):
        try:
            self._loaded = tf.saved_model.load(path)
        except (OSError, ValueError) as e:
            raise HashingError(f"{path}: cannot load SavedModel ({e})") from None
        self._images = self._loaded.signatures[SERVING_SIGNATURE]
        self._bytes = self._loaded.signatures[BYTES_SIGNATURE]
        spec = self._images.structured_input_signature[1]["images"]
        self.input_shape = tuple(spec.shape[1:])
        self.bits = int(self._images.structured_outputs["bits"].shape[-1])

    def encode(self, images) -> np.ndarray:
        out = self._images(images=tf.constant(np.asarray(images), tf.float32))
        return out["codes"].numpy()

    def encode_bytes(self, blobs) -> np.ndarray:
        return self._bytes(image_bytes=tf.constant(list(blobs), tf.string))["codes"].numpy()

    def ready(self) -> bool:
        return True
