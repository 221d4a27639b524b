"""Encoders: the ``Encoder`` interface and its Keras adapter, and batch-by-batch encoding
of a split (images stream from disk through the model into codes) into arrays or an
index file.

Three things encode images into packed codes, and all of them are ``Encoder``s: a
trained model in this process (``KerasEncoder``), an exported SavedModel
(``serving.export.SavedModelEncoder``) and TF Serving (``serving.client.TFServingClient``).
Only the codes (a few bytes an image) are kept, so encoding a collection of any size
needs the memory of one batch of pixels. A progress bar on stderr shows images/s and
the time left. Importing this module imports no TensorFlow.

Example:
    >>> from keras_hashing.data.datasets import load_dataset
    >>> from keras_hashing.models.methods.ssdh import SSDH
    >>> splits = load_dataset("digits")
    >>> model = SSDH(bits=16, input_shape=(8, 8, 1), num_classes=10)
    >>> codes, kept = encode_split(model, splits.query)
    >>> codes.shape, kept.all()
    ((359, 2), np.True_)
"""

from __future__ import annotations

import collections
import threading
from typing import Protocol

import numpy as np

from keras_hashing import codes as codes_lib
from keras_hashing.data.images import SUPPORTED_FORMATS, check_readable, warn, warn_skipped
from keras_hashing.data.splits import split_digest
from keras_hashing.evaluation import collapse_check
from keras_hashing.errors import DataError
from keras_hashing.fileio import open_regular
from keras_hashing.pixels import check_pixels


class Encoder(Protocol):
    """Anything that turns images into packed codes (uint8 rows of ceil(bits / 8) bytes,
    ``np.packbits`` order, the format of ``HammingIndex``).

    Implemented by ``KerasEncoder``, ``serving.export.SavedModelEncoder`` and
    ``serving.client.TFServingClient``; the search service, ``RetrievalClient`` and
    ``index build`` take any of them.
    """

    bits: int

    def encode(self, images) -> np.ndarray:
        """Packed codes of uint8 images (N, H, W, C) of the encoder's input size."""

    def encode_bytes(self, blobs) -> np.ndarray:
        """Packed codes of image files' bytes (PNG, JPEG, GIF, BMP, WebP), decoded and resized
        exactly as collections are."""

    def ready(self) -> bool:
        """True once the encoder can answer (a served model may still be loading)."""


class KerasEncoder:
    """The ``Encoder`` of a HashingModel in this process. One call at a time: a Keras
    model is not shared between threads.

    Example:
        >>> from keras_hashing.models.methods.ssdh import SSDH
        >>> encoder = KerasEncoder(SSDH(bits=16, input_shape=(8, 8, 1), num_classes=10))
        >>> encoder.encode(np.zeros((3, 8, 8, 1), np.uint8)).shape
        (3, 2)
    """

    def __init__(self, model):
        self.model = model
        self.bits = model.bits
        self._lock = threading.Lock()

    def encode(self, images) -> np.ndarray:
        images = check_pixels(images, self.model.image_shape)
        with self._lock:
            return self.model.encode(images)

    def encode_bytes(self, blobs) -> np.ndarray:
        import tensorflow as tf

        from keras_hashing.data.images import decode_image

        height, width, channels = self.model.image_shape
        images = []
        for blob in blobs:
            try:
                images.append(decode_image(tf.constant(blob), (height, width), channels).numpy())
            except tf.errors.OpError:
                raise DataError(f"an image could not be decoded (formats read: "
                                f"{', '.join(SUPPORTED_FORMATS)})") from None
        return self.encode(np.stack(images))

    def ready(self) -> bool:
        return True


def readable(outputs: dict):
    """(outputs of the readable images only, the (N,) mask of which those are) from
    ``predict_arrays`` outputs (all rows are readable when there is no "ok")."""
    ok = np.asarray(outputs.get("ok", np.ones(len(outputs["bits"]), bool)), bool)
    return {k: np.asarray(v)[ok] for k, v in outputs.items() if k != "ok"}, ok


def encode_split(model, split, batch_size=256, verbose=0):
    """(packed codes, kept) of a split: codes of the readable images, and the (N,) mask
    of which images those are (all True for an in-memory split)."""
    out, kept = readable(model.predict_arrays(split, batch_size=batch_size, verbose=verbose))
    return codes_lib.pack_bits(np.asarray(out["bits"], np.uint8)), kept


# -- index build ----------------------------------------------------------------------------
def model_batches(model, split, batch_size=256, verbose=0):
    """``start -> iterator of (positions, packed codes, ok)`` encoding with a Keras model."""
    from keras_hashing.models.prediction import iter_predictions

    def batches(start):
        for positions, outputs, ok in iter_predictions(model, split, batch_size, verbose,
                                                       desc="indexing", start=start):
            yield positions, codes_lib.pack_bits(np.asarray(outputs["bits"], np.uint8)), ok
    return batches


def serving_batches(client, split, batch_size=32, concurrency=4, verbose=0):
    """``start -> iterator of (positions, packed codes, ok)`` encoding image files through
    TF Serving's ``encode_bytes`` signature, ``concurrency`` requests in flight.

    A batch the server rejects (400: an image it cannot decode) is retried image by
    image, so one bad file marks only itself. No TensorFlow is imported here.
    """
    from concurrent.futures import ThreadPoolExecutor

    from keras_hashing.progress import progress_bar
    from keras_hashing.serving.client import BadRequestError

    paths = split.paths
    if paths is None:
        raise DataError("encoding through TF Serving reads image files: pass --images "
                        "folder:PATH, list:FILE or csv:FILE")
    on_bad_image = split.on_bad_image

    def read(path):
        try:
            with open_regular(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def encode(positions):
        blobs = [read(paths[i]) for i in positions]
        ok = np.array([b is not None for b in blobs])
        codes = np.zeros((len(positions), codes_lib.code_bytes(client.bits)), np.uint8)
        try:
            if ok.any():
                codes[ok] = client.encode_bytes([b for b in blobs if b is not None],
                                                batch_size=len(blobs))
        except BadRequestError:
            for j in np.flatnonzero(ok):
                try:
                    codes[j] = client.encode_bytes([blobs[j]])[0]
                except BadRequestError:
                    ok[j] = False
        return positions, codes, ok

    def batches(start):
        with ThreadPoolExecutor(max_workers=concurrency) as pool, \
                progress_bar(len(split), "indexing", verbose, initial=start) as bar:

            def answered(future):
                positions, codes, ok = future.result()
                if on_bad_image == "fail":
                    check_readable(paths[positions], ok, "fail")
                bar.update(len(positions))
                return positions, codes, ok

            pending = collections.deque()  # a bounded window of requests, answered in order
            for s in range(start, len(split), batch_size):
                pending.append(pool.submit(encode, np.arange(s, min(s + batch_size,
                                                                    len(split)))))
                if len(pending) >= 2 * concurrency:
                    yield answered(pending.popleft())
            while pending:
                yield answered(pending.popleft())
    return batches


def build_index(split, out, bits, batches, fingerprint: dict, metadata: dict):
    """Encode ``split`` through ``batches`` into the index file ``out``, resumably
    (``index_builder.IndexBuilder``); returns (index, skipped paths, resumed from)."""
    from keras_hashing.search.builder import IndexBuilder

    builder = IndexBuilder(out, bits, fingerprint)
    start = builder.consumed
    paths = split.paths
    try:
        for positions, packed, ok in batches(start):
            kept = positions[ok]
            builder.append(packed[ok], consumed=int(positions[-1]) + 1,
                           labels=None if split.y is None else split.y[kept],
                           paths=None if paths is None else paths[kept],
                           skipped=[] if paths is None else paths[positions[~ok]])
    except BaseException:
        builder.checkpoint()  # what was encoded stays for the next run to resume from
        builder.close()
        raise
    skipped = builder.skipped
    if skipped:
        warn_skipped(skipped)
    index = builder.finish(metadata)
    warn_if_collapsed(index, f"index {out}")
    return index, skipped, start


# rows the collapse check of an index looks at (evenly spaced): enough to see a collapse
COLLAPSE_SAMPLE = 100_000


def warn_if_collapsed(index, name: str) -> dict | None:
    """Print one warning line when the codes of ``index`` look collapsed
    (``evaluation.collapse_check`` on up to COLLAPSE_SAMPLE of its rows); returns the
    check, or None for an empty index."""
    if not len(index):
        return None
    rows = np.unique(np.linspace(0, len(index) - 1, min(len(index), COLLAPSE_SAMPLE)).astype(int))
    labels = None if index.labels is None else np.asarray(index.labels)[rows]
    check = collapse_check(codes_lib.unpack_bits(index.codes[rows], index.bits), labels)
    if check["collapsed"]:
        warn(f"{name}: {check['message']}")
    return check


def index_from_model(model, split, out, source: dict, identity: dict, batch_size=256,
                     verbose=0):
    """Build (or resume) the index of ``split`` encoded by a Keras model.

    ``source`` says where the images came from ({"images": SPEC} or the dataset split);
    ``identity`` names the model ({"run": PATH, "model_sha256": DIGEST}). Both are saved
    in the index metadata with the model's image shape, and a resume must match them.
    Returns (index, skipped paths, resumed from).
    """
    metadata = {**identity, "method": model.method_name,
                "image_size": list(model.image_shape[:2]), "channels": model.image_shape[2],
                **source}
    return build_index(split, out, model.bits, model_batches(model, split, batch_size, verbose),
                       _fingerprint(identity, model.bits, split, source), metadata)


def index_from_serving(client, split, out, source: dict, batch_size=32, concurrency=4,
                       verbose=0):
    """Build (or resume) the index of image files encoded by TF Serving; as
    ``index_from_model``. The index records the served model's digest (that of the run it
    was exported from), so every later path checks it alike. Imports no TensorFlow."""
    encoder = {"serving_url": client.url, "model": client.model_name,
               "version": client.version}
    digest = client.model_digest()
    metadata = {"serving_url": client.url, "model": client.model_name, **source,
                **({"model_sha256": digest} if digest else {})}
    return build_index(split, out, client.bits,
                       serving_batches(client, split, batch_size, concurrency, verbose),
                       _fingerprint(encoder, client.bits, split, source), metadata)


def check_index_matches_served(index, client, what: str) -> None:
    """Raise unless ``index`` holds codes of the model TF Serving serves: the same code
    length and, where both record it, the same model digest (the run's model.keras);
    for an index or export from before digests, the same model name.

    Example:
        >>> check_index_matches_served(index, client, "index photos.khi")  # doctest: +SKIP
    """
    from keras_hashing.errors import CodeLengthError, RunDirError

    if index.bits != client.bits:
        raise CodeLengthError(f"the served model {client.model_name} makes {client.bits}-bit "
                              f"codes but {what} holds {index.bits}-bit codes")
    recorded, served = index.metadata.get("model_sha256"), client.model_digest()
    if recorded and served:
        other = recorded != served
    else:
        other = bool(index.metadata.get("model")) and index.metadata["model"] != client.model_name
    if other:
        source = index.metadata.get("run") or index.metadata.get("model") or "another model"
        raise RunDirError(f"{what} was built by another model ({source}), not by the served "
                          f"{client.model_name}; its codes are not comparable: rebuild it with "
                          f"`keras-hashing index build --serving-url {client.url} --model "
                          f"{client.model_name} ...`, or serve the model that built it")


def _fingerprint(encoder, bits, split, source) -> dict:
    """What an interrupted build must share with its resume: encoder, source, and the
    whole input list (a digest of every path and label, in order: an image moved to
    another class folder, added or removed changes it)."""
    return {"encoder": encoder, "bits": bits, "count": len(split), "source": source,
            "inputs": split_digest(split)}



def save_codes(path, codes, bits, split, kept) -> None:
    """Packed codes (with the labels and paths of the images kept) to an .npz, atomically.

    Example:
        >>> codes = np.load("q.npz")["codes"]       # doctest: +SKIP
    """
    from keras_hashing.fileio import atomic_open

    arrays = {"codes": codes, "bits": np.int64(bits)}
    if split.y is not None:
        arrays["labels"] = split.y[kept]
    if split.paths is not None:
        arrays["paths"] = split.paths[kept].astype(str)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
