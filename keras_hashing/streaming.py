"""Encode a split batch by batch: images stream from disk through the model into codes.

Only the codes (a few bytes an image) are kept, so encoding a collection of any size
needs the memory of one batch of pixels. A progress bar on stderr shows images/s and
the time left.

Example:
    >>> from keras_hashing.data import load_dataset
    >>> from keras_hashing.methods.ssdh import SSDH
    >>> splits = load_dataset("digits")
    >>> model = SSDH(bits=16, input_shape=(8, 8, 1), num_classes=10)
    >>> codes, kept = encode_split(model, splits.query)
    >>> codes.shape, kept.all()
    ((359, 2), np.True_)
"""

from __future__ import annotations

import collections
import os
import sys

import numpy as np

from keras_hashing import codes as codes_lib
from keras_hashing.data import inference_dataset
from keras_hashing.errors import DataError
from keras_hashing.sources import check_readable, warn_skipped


def progress_bar(total, desc, verbose, initial=0):
    """A tqdm bar on stderr counting images (rate and ETA), silent when not verbose."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", unit_scale=total >= 10000,
                file=sys.stderr, disable=not verbose, mininterval=1.0, dynamic_ncols=True)


# Pixels per inference batch for streamed images: 256 images of 64 x 64. Large images get
# smaller batches (128 px: 64, 224 px: 20), so encoding's activations stay near the size
# of a training step's instead of growing with the image (codes do not depend on it).
PIXELS_PER_BATCH = 256 * 64 * 64


def inference_batch_size(image_shape, most=256) -> int:
    """Batch size for encoding streamed images of ``image_shape``: at most ``most``."""
    return int(max(1, min(most, PIXELS_PER_BATCH // (image_shape[0] * image_shape[1]))))


def iter_predictions(model, split, batch_size=256, verbose=0, desc="encoding", start=0):
    """Yield (positions, outputs, ok) per batch of ``split`` from position ``start``.

    ``outputs`` is the dict of numpy arrays of ``predict_step`` ("code", "bits", ...);
    ``ok`` is False for images that could not be read. With the split's
    ``on_bad_image == "fail"`` the first such image raises DataError naming it.
    """
    paths = getattr(split, "paths", None)
    fail = getattr(split, "on_bad_image", "fail") == "fail"
    if start:
        split = split.subset(np.arange(start, len(split)))
    predict = model.batch_predict_function()
    position = start
    with progress_bar(start + len(split), desc, verbose, initial=start) as bar:
        for images, ok in inference_dataset(split, batch_size):
            positions = np.arange(position, position + len(ok))
            ok = np.asarray(ok, bool)
            if fail:  # before the batch is encoded
                check_readable(None if paths is None else paths[positions], ok, "fail")
            yield positions, {k: np.asarray(v) for k, v in predict(images).items()}, ok
            position += len(ok)
            bar.update(len(ok))


def predict_split(model, split, batch_size=256, verbose=0, desc="encoding") -> dict:
    """Every output of ``predict_step`` for the whole split, plus "ok" (N,) bool."""
    parts, oks = [], []
    for _, outputs, ok in iter_predictions(model, split, batch_size, verbose, desc):
        parts.append(outputs)
        oks.append(ok)
    if not parts:
        return {"code": np.zeros((0, model.bits), np.float32),
                "bits": np.zeros((0, model.bits), np.uint8), "ok": np.zeros(0, bool)}
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    out["ok"] = np.concatenate(oks)
    check_readable(getattr(split, "paths", None), out["ok"], "skip")
    return out


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

    from keras_hashing.serving import BadRequestError

    paths = getattr(split, "paths", None)
    if paths is None:
        raise DataError("encoding through TF Serving reads image files: pass --images "
                        "folder:PATH, list:FILE or csv:FILE")
    on_bad_image = getattr(split, "on_bad_image", "fail")

    def read(path):
        try:
            with open(path, "rb") as f:
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
    from keras_hashing.index_builder import IndexBuilder

    builder = IndexBuilder(out, bits, fingerprint)
    start = builder.consumed
    paths = getattr(split, "paths", None)
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
    return builder.finish(metadata), skipped, start


def index_from_model(run_path, model, split, out, source: dict, batch_size=256, verbose=0):
    """Build (or resume) the index of ``split`` encoded by a run's model.

    ``source`` says where the images came from ({"images": SPEC} or the dataset split)
    and is saved in the index metadata with the run and the model's image shape.
    Returns (index, skipped paths, resumed from).
    """
    from keras_hashing.runs import model_digest

    digest = model_digest(run_path)
    encoder = {"run": os.path.abspath(run_path), "model_sha256": digest}
    metadata = {"run": os.path.abspath(run_path), "method": model.method_name,
                "model_sha256": digest,
                "image_size": list(model.image_shape[:2]), "channels": model.image_shape[2],
                **source}
    return build_index(split, out, model.bits, model_batches(model, split, batch_size, verbose),
                       _fingerprint(encoder, model.bits, split, source), metadata)


def index_from_serving(client, split, out, source: dict, batch_size=32, concurrency=4,
                       verbose=0):
    """Build (or resume) the index of image files encoded by TF Serving; as
    ``index_from_model``. Imports no TensorFlow."""
    encoder = {"serving_url": client.url, "model": client.model_name,
               "version": client.version}
    metadata = {"serving_url": client.url, "model": client.model_name, **source}
    return build_index(split, out, client.bits,
                       serving_batches(client, split, batch_size, concurrency, verbose),
                       _fingerprint(encoder, client.bits, split, source), metadata)


def _fingerprint(encoder, bits, split, source) -> dict:
    """What an interrupted build must share with its resume: encoder, inputs, length."""
    paths = getattr(split, "paths", None)
    return {"encoder": encoder, "bits": bits, "count": len(split), "source": source,
            "first": str(paths[0]) if paths is not None and len(split) else None}


def encoding_input(run_path=None, images=None, dataset=None, split="database", data_dir=None,
                   on_bad_image="fail"):
    """What ``encode`` and ``index build`` encode: (run or None, split, source).

    ``images`` (a collection spec, folder:PATH ...) is encoded by the run's model, or by
    TF Serving when there is no run; otherwise the run's dataset (or ``dataset``) split.
    ``source`` is what the index metadata records so ``search --show`` can load the
    images again (the image size and channels are the model's, recorded beside it).
    """
    from keras_hashing.errors import HashingError
    from keras_hashing.runs import load_run, load_run_with_splits

    if images:
        from keras_hashing.data import load_images_split

        run = load_run(run_path) if run_path else None
        # without a run, TF Serving decodes and resizes each file itself
        shape = run.model.image_shape if run else (1, 1, 3)
        return run, load_images_split(images, shape, data_dir, on_bad_image), {
            "images": images, "data_dir": data_dir}
    if not run_path:
        raise HashingError("give --run RUN (or --images with --serving-url)")
    run, splits = load_run_with_splits(run_path, dataset, data_dir)
    cfg = run.config
    source = {"dataset": splits.name, "protocol": splits.protocol, "split": split,
              "seed": cfg.get("seed"), "data_dir": data_dir or cfg.get("data_dir")}
    return run, getattr(splits, split), source


def check_codes_output(path, run_path=None, images=None) -> None:
    """``encode --out`` may replace an .npz of arrays, never a run's files or an input."""
    import zipfile

    from keras_hashing.fileio import check_output_path
    from keras_hashing.runs import MODEL_FILE

    def is_npz(candidate):
        try:
            with zipfile.ZipFile(candidate) as z:
                return all(name.endswith(".npy") for name in z.namelist())
        except (OSError, zipfile.BadZipFile):
            return False

    inputs = [os.path.join(run_path, MODEL_FILE)] if run_path else []
    if images and ":" in images:
        inputs.append(images.split(":", 1)[1])
    check_output_path(path, inputs=inputs, kind=is_npz)


def save_codes(path, codes, bits, split, kept) -> None:
    """Packed codes (with the labels and paths of the images kept) to an .npz, atomically.

    Example:
        >>> codes = np.load("q.npz")["codes"]       # doctest: +SKIP
    """
    from keras_hashing.fileio import atomic_open

    arrays = {"codes": codes, "bits": np.int64(bits)}
    if split.y is not None:
        arrays["labels"] = split.y[kept]
    if getattr(split, "paths", None) is not None:
        arrays["paths"] = split.paths[kept].astype(str)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
