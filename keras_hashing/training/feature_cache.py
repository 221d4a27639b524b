"""Cached frozen features: with the backbone frozen for the whole run (``freeze_backbone``)
and no augmentation, the training split goes through the backbone once and the head
trains on the stored features, so an epoch costs the head's work, not the backbone's.

The features are a ``.npy`` file (float32, N x D) in the run's backup folder, written
under a temporary name and renamed into place, memory-mapped when read, and named by a
digest of what they depend on: the backbone's configuration and weights, the image
shape and the training split's digest (its images and labels, in order). A changed
collection or backbone therefore never reuses them; a resumed run does. They go with
the backup when the run finishes.

A frozen backbone runs in inference mode (``HashingModel.call``), which is what is
stored, so the model trained on the cache is the model trained on images (the same
seed gives the same weights within float tolerance: ``tests/test_feature_cache.py``).

Example:
    >>> features = train_features(model, splits.train, "RUN/backup")    # doctest: +SKIP
    >>> features.shape                                                 # doctest: +SKIP
    (5395, 384)
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from keras_hashing.data.pipeline import inference_dataset
from keras_hashing.data.splits import ArraySplit, split_digest
from keras_hashing.fileio import atomic_path
from keras_hashing.runs import FEATURES_DIR
BATCH = 128


def eligible(cfg: dict, model) -> bool:
    """Whether this fit trains on cached features: a frozen backbone, no augmentation,
    gradient training of a method whose loss needs features only."""
    return bool(cfg["freeze_backbone"] and cfg["feature_cache"] and not cfg["augmentation"]
                and model.gradient_training and model.feature_cacheable
                and not model.spatial_features)


def feature_key(model, split) -> str:
    """The digest the stored features are named by."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"backbone": model.backbone_spec,
                              "kwargs": model.backbone_kwargs,
                              "image_shape": list(model.image_shape),
                              "split": split_digest(split)}, sort_keys=True,
                             default=str).encode())
    for weight in model.backbone.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return digest.hexdigest()[:24]


def train_features(model, split, folder):
    """(N, D) float32 features of ``split`` through ``model``'s frozen backbone, read from
    ``folder`` when stored there, else computed and stored; None when some image of a
    streamed split cannot be read (the images path then applies the bad-image policy)."""
    path = os.path.join(folder, FEATURES_DIR, f"train-{feature_key(model, split)}.npy")
    if os.path.isfile(path):
        return np.load(path, mmap_mode="r")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    extract = _extractor(model)
    dim = int(model.backbone.output.shape[-1])
    try:
        with atomic_path(path, suffix=".npy") as tmp:  # an error leaves no file behind
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(len(split), dim))
            start = 0
            for images, ok in inference_dataset(split, BATCH):
                if not np.all(ok):
                    raise _Unreadable
                out[start:start + len(images)] = np.asarray(extract(images))
                start += len(images)
            out.flush()
            del out
    except _Unreadable:
        return None
    return np.load(path, mmap_mode="r")


class _Unreadable(Exception):
    """An image of the split could not be read: no cache (the images path decides)."""


def feature_split(features, split) -> ArraySplit:
    """The training split with features in place of images (same order and labels)."""
    return ArraySplit(features, split.y)


def _extractor(model):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def extract(images):
        x = model.rescale(tf.cast(images, tf.float32))
        return model.backbone(x, training=False)

    return extract
