"""HashNet: deep learning to hash by continuation (Cao et al., ICCV 2017; code
github.com/thuml/HashNet).

Model: backbone -> Dense(K, N(0, init_std), bias 0) = z -> h = tanh(beta z); bits =
[z >= 0]. ``init_std`` defaults to the authors' 0.01.

Continuation: beta grows with the training step t as the authors' code has it,
beta = (1 + 0.005 t)^0.5, updated every 200 steps, so tanh approaches sign. t is a
non-trainable weight of the model, counted in ``train_step``: it is saved in
``model.keras`` and in fit's backups, so a resumed run continues from its beta.

Loss: the weighted pairwise likelihood over every pair of the (global) batch,
self-pairs included (``losses.hashnet_pair_loss``):

    d_ij = alpha <h_i, h_j>,  l_ij = log(1 + e^{d_ij}) - s_ij d_ij,  alpha = 10 / K
    L = mean over similar pairs + mean over dissimilar pairs

which is the paper's |S| / |S1| and |S| / |S0| weighting (and the code's
``pairwise_loss_updated``), s_ij = 1 when labels are shared.

Departures: the code's ``train.py`` compares two halves of a batch with a fixed
positive weight ``class_num`` and a linear form of the loss above d = 15; we use the
paper's per-batch weighting on all pairs of one batch, which needs no per-dataset
weight; the hash layer's 10x learning rate is left to the recipe's optimizer. The
shipped recipes start the hash layer at N(0, 0.1): the loss is bilinear in the codes, so
it has a saddle at h = 0, and the authors' 0.01 on top of 4096-d pretrained features
starts well away from it while on our from-scratch features it starts next to it
(digits, 16 bits, 8 epochs: query mAP 0.46 at 0.01, 0.76 at 0.1; 48 bits, the digits
recipe: 0.52 and 0.93).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_hashing.models import losses
from keras_hashing.models.layers import PACKAGE
from keras_hashing.models.methods.base import HashingModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class HashNet(HashingModel):
    """HashNet hashing model; ``beta()`` is the continuation's current scale.

    Example:
        >>> m = HashNet(bits=16, input_shape=(8, 8, 1), num_classes=10)
        >>> float(m.beta()), m.params["step_size"]
        (1.0, 200)
    """

    method_name = "hashnet"
    default_params = {"alpha": None, "gamma": 0.005, "power": 0.5, "step_size": 200,
                      "init_std": 0.01}
    term_names = ("pairs",)

    def build_head(self):
        std = self.params["init_std"]
        self.hash_layer = keras.layers.Dense(
            self.bits, kernel_initializer=(keras.initializers.RandomNormal(stddev=std) if std
                                           else "glorot_uniform"),
            kernel_regularizer=self.kernel_regularizer(), name="hash")
        self.continuation_step = self.add_weight(shape=(), name="continuation_step",
                                                 initializer="zeros", trainable=False,
                                                 dtype="int64",
                                                 aggregation="only_first_replica")

    def beta(self):
        """(1 + gamma t')^power, t' = the step rounded down to a multiple of step_size."""
        p = self.params
        step = ops.cast(self.continuation_step, "float32")
        step = ops.floor(step / p["step_size"]) * p["step_size"]
        return ops.power(1.0 + p["gamma"] * step, p["power"])

    def head(self, features, training=False):
        z = self.hash_layer(features)
        return {"code": ops.tanh(self.beta() * z), "logits": z}

    def loss_terms(self, outputs, targets):
        alpha = self.params["alpha"] if self.params["alpha"] is not None else 10.0 / self.bits
        similarity = losses.pairwise_similarity(targets, self.multi_label)
        pairs = losses.hashnet_pair_loss(outputs["code"], similarity, float(alpha))
        return {"pairs": pairs, "loss": pairs}

    def after_train_step(self, outputs, targets):
        self.continuation_step.assign_add(1)
