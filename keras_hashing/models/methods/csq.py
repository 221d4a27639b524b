"""CSQ: central similarity quantization (Yuan et al., CVPR 2020; code
github.com/yuanli2333/Hadamard-Matrix-for-hashing).

Model: backbone -> Dense(K) = z -> u = tanh(z); bits = [u >= 0].

Every class has a fixed hash center c in {-1, +1}^K (``centers.hash_centers``: Hadamard
rows when K is a power of two and C <= 2K, else random balanced codes far apart), made
once from ``center_seed`` and kept as a non-trainable weight, so a loaded run has the
same centers. Multi-label data (the authors' rule): an image's center is the sign of the
mean of its classes' centers, bits where that mean is 0 taken from one fixed random
+-1 vector.

Loss (the published runs; the pairwise term of the code is off there):

    L = mean_{n,k} BCE((u + 1) / 2, (c + 1) / 2)      (losses.csq_center_loss)
        + lambda * mean_{n,k} (|u| - 1)^2             (losses.csq_quantization_loss)

lambda (``quantization_weight``) is 0.05, the code's default (``options.py``, ResNet-50);
DeepHash-pytorch uses 1e-4 and FIRe 1e-3.

Departures, and why: the head is one Dense layer (DeepHash-pytorch's and FIRe's) rather
than the official ResNet head's two extra 2048-unit ReLU layers, which adapt ImageNet
pooled features and would dominate our small backbones; the BCE is computed from z in
its stable form (softplus(2z) - 2zt, equal to the BCE of (1 + tanh z) / 2), so it stays
finite when tanh saturates; with more classes than 2K the centers are random instead of
the code's silent truncation to 2K classes.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_hashing.models import losses
from keras_hashing.models.centers import fill_vector, hash_centers
from keras_hashing.models.layers import PACKAGE
from keras_hashing.models.methods.base import LinearCodeModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class CSQ(LinearCodeModel):
    """CSQ hashing model with its fixed hash centers.

    Example:
        >>> import numpy as np
        >>> m = CSQ(bits=16, input_shape=(8, 8, 1), num_classes=10)
        >>> tuple(m.centers.shape), float(np.abs(m.centers.numpy()).min())
        ((10, 16), 1.0)
    """

    method_name = "csq"
    default_params = {"quantization_weight": 0.05, "center_seed": 0}
    term_names = ("center", "quantization")

    def build_head(self):
        super().build_head()  # Dense(K) = z
        seed = self.params["center_seed"]
        self.centers = self.add_weight(shape=(self.num_classes, self.bits), name="hash_centers",
                                       initializer="zeros", trainable=False)
        self.centers.assign(hash_centers(self.num_classes, self.bits, seed))
        self.center_fill = self.add_weight(shape=(self.bits,), name="center_fill",
                                           initializer="zeros", trainable=False)
        self.center_fill.assign(fill_vector(self.bits, seed))

    def head(self, features, training=False):
        z = self.hash_layer(features)
        return {"code": ops.tanh(z), "logits": z}

    def batch_centers(self, targets):
        """Each example's hash center (N, K): its class's, or for multi-hot labels the
        sign of the mean of its classes' centers with ties from ``center_fill``."""
        if not self.multi_label:
            return ops.take(self.centers, ops.cast(ops.reshape(targets, (-1,)), "int32"), axis=0)
        y = ops.cast(targets, "float32")
        mean = ops.matmul(y, self.centers) / ops.maximum(ops.sum(y, axis=1, keepdims=True), 1.0)
        return ops.where(mean > 0, 1.0, ops.where(mean < 0, -1.0, self.center_fill[None, :]))

    def loss_terms(self, outputs, targets):
        terms = {"center": losses.csq_center_loss(outputs["logits"], self.batch_centers(targets)),
                 "quantization": losses.csq_quantization_loss(outputs["code"])}
        terms["loss"] = terms["center"] + self.params["quantization_weight"] * terms["quantization"]
        return terms
