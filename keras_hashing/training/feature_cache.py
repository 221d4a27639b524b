"""Cached frozen features: with the backbone frozen for the whole run (``freeze_backbone``)
and no augmentation, the training split goes through the backbone once and the head
trains on the stored features, so an epoch costs the head's work, not the backbone's.

The features of the training and validation splits (validation then scores the head on
them too) are ``.npy`` files (float32, N x D) in the run's backup folder, written
under a temporary name and renamed into place, memory-mapped when read, and named by a
digest of what they depend on: the backbone's configuration and weights, the image
shape and the training split's digest (its images and labels, in order). A changed
collection or backbone therefore never reuses them; a resumed run does. They go with
the backup when the run finishes.

A frozen backbone runs in inference mode (``HashingModel.call``), which is what is
stored, so the model trained on the cache is the model trained on images (the same
seed gives the same weights within float tolerance: ``tests/test_feature_cache.py``).

Example:
    >>> features = split_features(model, splits.train, "RUN/backup")    # doctest: +SKIP
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

# images a batch of the one encoding pass
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


def cached_splits(cfg: dict, model, splits, folder):
    """{"train", "val"}: the two splits with their stored features in place of images
    (``feature_split``), where this fit trains on a cache (``eligible``); else None."""
    if not eligible(cfg, model):
        return None
    found = {}
    for name in ("train", "val"):
        features = split_features(model, splits.split(name), folder, name)
        if features is None:
            return None
        found[name] = feature_split(features, splits.split(name))
    return found


def encode_features(model, split, batch=1024):
    """(packed codes, kept) of a split of features, as ``encoders.encode_split`` gives
    for images (validation on the cache: the model's head only)."""
    from keras_hashing.codes import pack_bits

    bits = [np.asarray(model.binarize(model.outputs_of(
        np.asarray(split.x[start:start + batch], np.float32))["code"]), np.uint8)
        for start in range(0, len(split), batch)]
    return pack_bits(np.concatenate(bits)), np.ones(len(split), bool)


def split_features(model, split, folder, name="train"):
    """(N, D) float32 features of ``split`` through ``model``'s frozen backbone, read from
    ``folder`` when stored there, else computed and stored; None when some image of a
    streamed split cannot be read (the images path then applies the bad-image policy)."""
    path = os.path.join(folder, FEATURES_DIR, f"{name}-{feature_key(model, split)}.npy")
    if os.path.isfile(path):
        return np.load(path, mmap_mode="r")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dim = int(model.backbone.output.shape[-1])
    try:
        with atomic_path(path, suffix=".npy") as tmp:  # an error leaves no file behind
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(len(split), dim))
            start = 0
            for images, ok in inference_dataset(split, BATCH):
                if not np.all(ok):
                    raise _Unreadable
                out[start:start + len(images)] = model.features(images.numpy())
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
