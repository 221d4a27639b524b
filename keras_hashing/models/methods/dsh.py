"""DSH: deep supervised hashing (Liu, Wang, Shan, Chen, CVPR 2016).

Model: backbone -> linear layer of K real outputs b; bits = sign(b) (sign(0) = +1).

Loss, on every pair i < j of the batch (the authors' "online pair generation"):

    L = sum_{i<j} [1/2 S_ij ||b_i - b_j||^2 + 1/2 (1 - S_ij) max(m - ||b_i - b_j||^2, 0)]
        / (n (n - 1))  +  alpha * (1/n) sum_i || |b_i| - 1 ||_1

with S_ij = 1 for a similar pair (DSH's y = 0), the hinge on the squared distance,
m = 2K and alpha = 0.01 as in ``hashing_loss_layer.cpp`` / the shipped prototxt.
Multi-label data: similar when the labels share a class.

Departures: Adam instead of SGD by default (recipes say which); the authors' network
(conv5x5/32, pool, conv5x5/32, pool, conv5x5/64, FC500) is close to our ``lenet``
backbone; training starts from scratch at every code length instead of fine-tuning
longer codes from the 12-bit model.
"""

from __future__ import annotations

import keras

from keras_hashing.models import losses
from keras_hashing.models.layers import PACKAGE
from keras_hashing.models.methods.base import LinearCodeModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class DSH(LinearCodeModel):
    """DSH hashing model. ``margin: null`` means m = 2K.

    Example:
        >>> import numpy as np
        >>> DSH(bits=12, input_shape=(8, 8, 1), num_classes=10).encode(
        ...     np.zeros((2, 8, 8, 1), "uint8")).shape
        (2, 2)
    """

    method_name = "dsh"
    default_params = {"margin": None, "alpha": 0.01}
    term_names = ("pairs", "regularizer")

    def loss_terms(self, outputs, targets):
        b = outputs["code"]
        margin = self.params["margin"] if self.params["margin"] is not None else 2.0 * self.bits
        similarity = losses.pairwise_similarity(targets, self.multi_label)
        terms = {"pairs": losses.dsh_pair_loss(b, similarity, float(margin)),
                 "regularizer": losses.dsh_regularizer(b)}
        terms["loss"] = terms["pairs"] + self.params["alpha"] * terms["regularizer"]
        return terms
