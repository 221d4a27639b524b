"""OrthoHash: one loss for all (Hoe et al., NeurIPS 2021; code github.com/kamwoh/orthohash).

Model: backbone -> Dense(K, no bias, N(0, 0.01)) -> BatchNormalization = v; bits =
[v >= 0], v taken from the BatchNormalization in inference mode.

Each class c has a fixed codeword o_c in {-1, +1}^K (``centers.bernoulli_codebook``, the
code's default ``B``: every bit +-1 with probability 1/2), drawn once from
``codebook_seed`` and kept as a non-trainable weight. The logits are the cosines of v
with the codewords, and the loss is a margin cross-entropy over them
(``losses.orthohash_loss``):

    OrthoCos:  CE(s (cos(v, o) - m y))                      (``angular: false``)
    OrthoArc:  CE(s cos(acos(cos(v, o)) + m y))             (``angular: true``)

s = 8 and m = 0.2 are the code's defaults (its README's CIFAR-10 run uses m = 0.3; the
supplement's s = sqrt(K) is not in the code). Multi-label data: the margin comes off
every positive class and the cross-entropy is weighted y / sum(y) (the code's
``label_smoothing`` multiclass loss; its single-label path on COCO is a bug FIRe fixed).
The quantisation term of the code defaults to weight 0 and is left out.

Departures: BatchNormalization uses PyTorch's momentum 0.1 and epsilon 1e-5 (Keras
``momentum=0.9, epsilon=1e-5``); an epsilon under the cosine's norms keeps an all-zero v
finite (the authors' code gives NaN).
"""

from __future__ import annotations

import keras

from keras_hashing.models import losses
from keras_hashing.models.centers import bernoulli_codebook
from keras_hashing.models.layers import PACKAGE, batch_norm
from keras_hashing.models.methods.base import HashingModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class OrthoHash(HashingModel):
    """OrthoHash (OrthoCos, or OrthoArc with ``angular: true``) hashing model.

    Example:
        >>> import numpy as np
        >>> m = OrthoHash(bits=16, input_shape=(8, 8, 1), num_classes=10)
        >>> out = m(np.zeros((2, 8, 8, 1), "uint8"))
        >>> tuple(out["code"].shape), tuple(out["cosines"].shape)
        ((2, 16), (2, 10))
    """

    method_name = "orthohash"
    default_params = {"scale": 8.0, "margin": 0.2, "angular": False, "codebook_seed": 0}
    term_names = ("cross_entropy",)

    def build_head(self):
        self.hash_layer = keras.layers.Dense(
            self.bits, use_bias=False, kernel_initializer=keras.initializers.RandomNormal(
                stddev=0.01), kernel_regularizer=self.kernel_regularizer(), name="hash")
        self.hash_norm = batch_norm(epsilon=1e-5, name="hash_norm")
        self.codebook = self.add_weight(shape=(self.num_classes, self.bits), name="codebook",
                                        initializer="zeros", trainable=False)
        self.codebook.assign(bernoulli_codebook(self.num_classes, self.bits,
                                                self.params["codebook_seed"]))

    def head(self, features, training=False):
        v = self.hash_norm(self.hash_layer(features), training=training)
        return {"code": v, "cosines": losses.cosine_logits(v, self.codebook)}

    def loss_terms(self, outputs, targets):
        p = self.params
        ce = losses.orthohash_loss(outputs["cosines"], targets, p["scale"], p["margin"],
                                   self.multi_label, p["angular"])
        return {"cross_entropy": ce, "loss": ce}
