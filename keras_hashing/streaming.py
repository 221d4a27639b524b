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

import sys

import numpy as np

from keras_hashing import codes as codes_lib
from keras_hashing.data import inference_dataset
from keras_hashing.errors import DataError
from keras_hashing.sources import warn


def progress_bar(total, desc, verbose, initial=0):
    """A tqdm bar on stderr counting images (rate and ETA), silent when not verbose."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", unit_scale=total >= 10000,
                file=sys.stderr, disable=not verbose, mininterval=1.0, dynamic_ncols=True)


def _predict_function(model):
    import tensorflow as tf

    if getattr(model, "_streaming_predict", None) is None:
        model._streaming_predict = tf.function(model.predict_step, autograph=False,
                                               reduce_retracing=True)
    return model._streaming_predict


def iter_predictions(model, split, batch_size=256, verbose=0, desc="encoding", start=0):
    """Yield (positions, outputs, ok) per batch of ``split`` from position ``start``.

    ``outputs`` is the dict of numpy arrays of ``predict_step`` ("code", "bits", ...);
    ``ok`` is False for images that could not be read. With the split's
    ``on_bad_image == "fail"`` the first such image raises DataError naming it.
    """
    if start:
        split = split.subset(np.arange(start, len(split)))
    predict = _predict_function(model)
    policy = getattr(split, "on_bad_image", "fail")
    position = start
    with progress_bar(start + len(split), desc, verbose, initial=start) as bar:
        for images, ok in inference_dataset(split, batch_size):
            ok = np.asarray(ok, bool)
            n = len(ok)
            if not ok.all() and policy == "fail":
                bad = split.paths[position - start + int(np.argmin(ok))]
                raise DataError(f"{bad}: cannot read image (missing, unreadable, truncated or "
                                "not an image); fix or remove it, or pass --on-bad-image skip")
            outputs = {k: np.asarray(v) for k, v in predict(images).items()}
            yield np.arange(position, position + n), outputs, ok
            position += n
            bar.update(n)


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
    report_skipped(split, out["ok"])
    return out


def report_skipped(split, ok) -> None:
    if not ok.all():
        paths = getattr(split, "paths", None)
        example = f", e.g. {paths[int(np.argmin(ok))]}" if paths is not None else ""
        warn(f"skipped {int((~ok).sum())} unreadable image(s){example}")


def encode_split(model, split, batch_size=256, verbose=0):
    """(packed codes, kept) of a split: codes of the readable images, and the (N,) mask
    of which images those are (all True for an in-memory split)."""
    out = model.predict_arrays(split, batch_size=batch_size, verbose=verbose)
    kept = out.get("ok", np.ones(len(out["bits"]), bool))
    return codes_lib.pack_bits(np.asarray(out["bits"], np.uint8)[kept]), kept


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
        chunks = (np.arange(s, min(s + batch_size, len(split)))
                  for s in range(start, len(split), batch_size))
        with ThreadPoolExecutor(max_workers=concurrency) as pool, \
                progress_bar(len(split), "indexing", verbose, initial=start) as bar:
            pending = []
            for chunk in chunks:  # a bounded window of requests, answered in order
                pending.append(pool.submit(encode, chunk))
                if len(pending) >= 2 * concurrency:
                    result = pending.pop(0).result()
                    bar.update(len(result[0]))
                    yield _checked(split, *result)
            for future in pending:
                result = future.result()
                bar.update(len(result[0]))
                yield _checked(split, *result)
    return batches


def _checked(split, positions, codes, ok):
    if not ok.all() and getattr(split, "on_bad_image", "fail") == "fail":
        raise DataError(f"{split.paths[positions[int(np.argmin(ok))]]}: cannot read or decode "
                        "image; fix or remove it, or pass --on-bad-image skip")
    return positions, codes, ok


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
    if skipped and getattr(split, "on_bad_image", "fail") == "skip":
        warn(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    return builder.finish(metadata), skipped, start
