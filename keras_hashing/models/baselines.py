"""Classic unsupervised hashing baselines (numpy + scikit-learn): LSH, PCAH, ITQ.

scikit-learn style: the constructor stores parameters, ``fit(x)`` learns, fitted state
ends in ``_``, ``encode(x)`` returns packed codes (the HammingIndex format). Each is a
linear projection followed by sign: bits = [x W + c >= 0], exposed by ``projection()``
so a Keras model can carry it (``methods/linear.py``: ``--method lsh|pcah|itq``).

* LSH: random Gaussian projections of centred data (Charikar's sign random projections);
* PCAH: the top-K principal directions;
* ITQ (Gong & Lazebnik, CVPR 2011): PCA to K dimensions, then 50 iterations of
  alternating B = sign(V R) and the orthogonal Procrustes rotation R.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(200, 20))
    >>> ITQ(bits=8).fit(x).encode(x).shape
    (200, 1)
"""

from __future__ import annotations

import numpy as np

from keras_hashing.codes import check_bits, pack_bits, sign_pm1
from keras_hashing.errors import ConfigError, DataError


class _LinearHash:
    # the objective after each iteration, for the ones that iterate (ITQ); else empty
    quantization_loss_: list = []

    def __init__(self, bits, seed=0):
        self.bits = check_bits(bits)
        self.seed = seed

    def _check(self, x):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise DataError(f"features must be a non-empty (N, D) array, got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise DataError("features contain NaN or infinite values")
        return x

    def fit(self, x):
        x = self._check(x)
        self.mean_ = x.mean(axis=0)
        self.weights_ = self._fit_weights(x - self.mean_)
        return self

    def projection(self):
        """(W (D, K), c (K,)) with continuous code h = x W + c and bits = [h >= 0]."""
        return self.weights_, -self.mean_ @ self.weights_

    def embed(self, x) -> np.ndarray:
        w, c = self.projection()
        return self._check(x) @ w + c

    def encode(self, x) -> np.ndarray:
        return pack_bits(self.embed(x) >= 0)

    def _pca(self, centred):
        if self.bits > min(centred.shape):
            raise ConfigError(f"{type(self).__name__} with {self.bits} bits needs at least "
                              f"{self.bits} feature dimensions and samples; got "
                              f"{centred.shape}")
        from sklearn.decomposition import PCA

        return PCA(n_components=self.bits, random_state=self.seed).fit(centred).components_.T


class LSH(_LinearHash):
    """Sign random projections: W ~ N(0, 1)."""

    def _fit_weights(self, centred):
        return np.random.default_rng(self.seed).normal(size=(centred.shape[1], self.bits))


class PCAH(_LinearHash):
    """Top-K principal directions, then sign; with ``rotate``, a random orthogonal
    rotation of them first (balances the variance between the bits: the training-free
    "Hashing-Baseline" recipe over frozen foundation-model features, arXiv 2509.14427).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(100, 16))
        >>> PCAH(8, rotate=True).fit(x).encode(x).shape
        (100, 1)
    """

    def __init__(self, bits, seed=0, rotate=False):
        super().__init__(bits, seed)
        self.rotate = bool(rotate)

    def _fit_weights(self, centred):
        pca = self._pca(centred)
        if not self.rotate:
            return pca
        rotation, _ = np.linalg.qr(np.random.default_rng(self.seed).normal(
            size=(self.bits, self.bits)))
        return pca @ rotation


class ITQ(_LinearHash):
    """Iterative quantisation: PCA then the rotation minimising ||B - V R||_F."""

    def __init__(self, bits, seed=0, iterations=50):
        super().__init__(bits, seed)
        self.iterations = int(iterations)

    def _fit_weights(self, centred):
        pca = self._pca(centred)
        v = centred @ pca
        rng = np.random.default_rng(self.seed)
        rotation, _ = np.linalg.qr(rng.normal(size=(self.bits, self.bits)))
        self.quantization_loss_ = []
        for _ in range(self.iterations):
            b = sign_pm1(v @ rotation)
            self.quantization_loss_.append(float(np.sum((b - v @ rotation) ** 2)))
            u, _, vt = np.linalg.svd(v.T @ b)  # orthogonal Procrustes
            rotation = u @ vt
        self.rotation_ = rotation
        return pca @ rotation


BASELINES = {"lsh": LSH, "pcah": PCAH, "itq": ITQ}
