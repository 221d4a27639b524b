"""Batch-by-batch prediction of a split: images stream from disk through a model, so
encoding a collection of any size needs the memory of one batch of pixels. A progress bar
on stderr shows images/s and the time left.

Example:
    >>> from keras_hashing.data.datasets import load_dataset
    >>> from keras_hashing.models.methods.ssdh import SSDH
    >>> splits = load_dataset("digits")
    >>> model = SSDH(bits=16, input_shape=(8, 8, 1), num_classes=10)
    >>> predict_split(model, splits.query)["bits"].shape
    (359, 16)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_hashing.data.pipeline import inference_dataset
from keras_hashing.data.images import check_readable
from keras_hashing.progress import progress_bar


def multi_worker(strategy) -> bool:
    """True under a MultiWorkerMirroredStrategy, where Keras 3.15's fit and predict fail
    (keras-team/keras#20585; drop the custom loop once a Keras release fixes it)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


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
    paths = split.paths
    fail = split.on_bad_image == "fail"
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
    check_readable(split.paths, out["ok"], "skip")
    return out
