"""GreedyHash (Su et al., NeurIPS 2018; code github.com/ssppp/GreedyHash).

Model: backbone -> Dense(K) = h -> b = sign(h) in the forward pass, the gradient passed
straight through (``layers.SignQuantize``) -> classifier Dense(C, no bias) on b.
Bits = [h >= 0].

Loss (the code's ``cifar1.py``):

    L = CE(W b, y) + alpha * mean_{n,k} | (|h_nk| - 1)^3 |      (losses.greedyhash_penalty)

alpha = 0.1 (CIFAR; the ImageNet script uses 1). Multi-label data: the per-label sigmoid
cross-entropy of ``losses.classification_loss`` (the code is single-label only; FIRe
uses a label-smoothed softmax).

Departures: sign(0) = +1 here (PyTorch's sign(0) = 0 passes a 0 to the classifier);
optional label smoothing of the classification term as the other classifier-based
methods have it.
"""

from __future__ import annotations

import keras

from keras_hashing.models import losses
from keras_hashing.models.layers import PACKAGE, SignQuantize
from keras_hashing.models.methods.base import LinearCodeModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class GreedyHash(LinearCodeModel):
    """GreedyHash hashing model.

    Example:
        >>> import numpy as np
        >>> m = GreedyHash(bits=12, input_shape=(8, 8, 1), num_classes=10)
        >>> out = m(np.zeros((2, 8, 8, 1), "uint8"))
        >>> sorted(set(np.abs(np.asarray(out["binary"])).ravel().tolist()))
        [1.0]
    """

    method_name = "greedyhash"
    default_params = {"alpha": 0.1, "label_smoothing": 0.0}
    term_names = ("classification", "penalty")

    def build_head(self):
        super().build_head()  # Dense(K) = h
        self.sign = SignQuantize(name="sign")
        self.classifier = keras.layers.Dense(self.num_classes, use_bias=False,
                                             kernel_regularizer=self.kernel_regularizer(),
                                             name="classifier")

    def head(self, features, training=False):
        h = self.hash_layer(features)
        b = self.sign(h)
        return {"code": h, "binary": b, "logits": self.classifier(b)}

    def loss_terms(self, outputs, targets):
        terms = {"classification": losses.classification_loss(
                     targets, outputs["logits"], self.multi_label, self.params["label_smoothing"]),
                 "penalty": losses.greedyhash_penalty(outputs["code"])}
        terms["loss"] = terms["classification"] + self.params["alpha"] * terms["penalty"]
        return terms
