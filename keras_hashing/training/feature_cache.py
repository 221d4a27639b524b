"""Cached frozen features: with the backbone frozen (for the whole run, ``freeze_backbone``,
or for the warm-up epochs, ``backbone_warmup_epochs``) and no augmentation, the training
split goes through the backbone once and the head trains on the stored features, so a
frozen epoch costs the head's work, not the backbone's.

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
from dataclasses import dataclass

import numpy as np

from keras_hashing.data.pipeline import inference_dataset
from keras_hashing.data.splits import ArraySplit, split_digest
from keras_hashing.fileio import atomic_path
from keras_hashing.runs import FEATURES_DIR

# images a batch of the one encoding pass
BATCH = 128


def cached_epochs(cfg: dict, model) -> int:
    """How many leading epochs train on cached features: every epoch with the backbone
    frozen for the whole run (``freeze_backbone``), the warm-up epochs with
    ``backbone_warmup_epochs`` (the backbone joins on images after them), else 0. Only a
    gradient-trained method whose loss needs features alone, without augmentation (each
    epoch would see other images) and with ``feature_cache`` on, trains on a cache."""
    if not (cfg["feature_cache"] and not cfg["augmentation"] and model.gradient_training
            and model.feature_cacheable and not model.spatial_features):
        return 0
    if cfg["freeze_backbone"]:
        return int(cfg["epochs"])
    return min(int(cfg["backbone_warmup_epochs"]), int(cfg["epochs"]))


@dataclass(frozen=True)
class Phase:
    """Consecutive epochs of a fit that train on the same inputs: ``train`` and ``val``
    (images, or their stored features where ``on_features``) up to epoch ``end``."""

    train: object
    val: object
    end: int
    on_features: bool


def fit_phases(cfg: dict, model, splits, initial_epoch: int, folder) -> list[Phase]:
    """The phases of a fit from ``initial_epoch``: the epochs on cached features
    (``cached_epochs``; the cache is read from or written to ``folder``), then the epochs
    on images. One images phase where nothing is cached, or where an image of a streamed
    split cannot be read (the images path then applies the bad-image policy).

    Example:
        >>> [(p.end, p.on_features) for p in fit_phases(cfg, model, splits, 0, folder)]
        ... # doctest: +SKIP
        [(2, True), (20, False)]          # backbone_warmup_epochs=2, epochs=20
    """
    phases, start = [], initial_epoch
    until = cached_epochs(cfg, model)
    cached = cached_splits(model, splits, folder) if initial_epoch < until else None
    if cached is not None:
        phases.append(Phase(cached["train"], cached["val"], until, on_features=True))
        start = until
    if start < cfg["epochs"] or not phases:
        phases.append(Phase(splits.train, splits.val, int(cfg["epochs"]), on_features=False))
    return phases


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


def cached_splits(model, splits, folder):
    """{"train", "val"}: the two splits with their stored features in place of images
    (``feature_split``), read from or written to ``folder``; None where some image of a
    streamed split cannot be read (the images path then applies the bad-image policy)."""
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

    return pack_bits(model.head_arrays(split.x, batch)["bits"]), np.ones(len(split), bool)


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
