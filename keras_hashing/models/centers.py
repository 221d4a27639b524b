"""Fixed class codes in {-1, +1}: CSQ's hash centers and OrthoHash's codebook.

Made once from a seed when a model is built and kept as non-trainable weights, so a
loaded run encodes exactly as the trained one did (numpy only; no TensorFlow here).

Example:
    >>> c = hash_centers(10, 16, seed=0)
    >>> c.shape, sorted(set(c.ravel().tolist())), int(min_pairwise_distance(c))
    ((10, 16), [-1.0, 1.0], 8)
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import hadamard

from keras_hashing.errors import ConfigError

RANDOM_CENTER_TRIES = 1000


def min_pairwise_distance(codes) -> float:
    """The smallest Hamming distance between two rows of +-1 codes (K for one row)."""
    codes = np.asarray(codes, np.float64)
    if len(codes) < 2:
        return float(codes.shape[1])
    distance = (codes.shape[1] - codes @ codes.T) / 2
    return float(distance[np.triu_indices(len(codes), 1)].min())


def hash_centers(num_classes: int, bits: int, seed: int = 0) -> np.ndarray:
    """CSQ's hash centers (C, K) float32, as the authors make them.

    Rows of the Hadamard matrix H_K when K is a power of two and C <= K, of [H_K; -H_K]
    when C <= 2K (pairwise distance K/2, or K between a row and its negation). Otherwise
    random balanced codes (K/2 of each sign), redrawn until the closest pair is farther
    than K/4 and the mean distance at least K/2 (DeepHash-pytorch's acceptance rule; the
    authors' notebook asks >= 20 and >= 32 at 64 bits); after ``RANDOM_CENTER_TRIES``
    draws the draw with the farthest closest pair is kept. Never truncated: every class
    gets a center.
    """
    if num_classes < 1:
        raise ConfigError(f"hash centers need at least one class, got {num_classes}")
    if bits & (bits - 1) == 0 and num_classes <= 2 * bits:
        h = hadamard(bits).astype(np.float32)
        return np.concatenate([h, -h])[:num_classes]
    rng = np.random.default_rng(seed)
    best, best_min = None, -1.0
    for _ in range(RANDOM_CENTER_TRIES):
        centers = np.ones((num_classes, bits), np.float32)
        for row in centers:
            row[rng.choice(bits, bits // 2, replace=False)] = -1.0
        closest = min_pairwise_distance(centers)
        distance = (bits - centers @ centers.T) / 2
        mean = distance[np.triu_indices(num_classes, 1)].mean() if num_classes > 1 else bits
        if closest > bits / 4 and mean >= bits / 2:
            return centers
        if closest > best_min:
            best, best_min = centers, closest
    return best


def bernoulli_codebook(num_classes: int, bits: int, seed: int = 0) -> np.ndarray:
    """OrthoHash's default codebook (C, K) float32: each bit +-1 with probability 1/2
    (its ``--codebook-method B``), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random((num_classes, bits)) < 0.5, -1.0, 1.0).astype(np.float32)


def fill_vector(bits: int, seed: int = 0) -> np.ndarray:
    """The fixed random +-1 vector CSQ fills the undecided bits of a multi-label center
    with (drawn once per run in the authors' code)."""
    rng = np.random.default_rng([seed, 1])
    return np.where(rng.random(bits) < 0.5, -1.0, 1.0).astype(np.float32)
