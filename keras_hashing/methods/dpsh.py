"""DPSH: deep pairwise-supervised hashing (Li, Wang, Kang, IJCAI 2016).

Model: backbone -> linear layer u (K outputs); bits = sign(u).

Loss:

    Theta_ij = 1/2 u_i^T u_j
    L = -sum_ij (S_ij Theta_ij - log(1 + e^Theta_ij)) + eta sum_i ||b_i - u_i||^2

with log(1 + e^x) computed stably (softplus) and eta = 10.

Departures, and why: the official PyTorch code compares each batch with a memory bank of
all N training outputs and divides both terms by N x batch. Here pairs are in-batch
(every method shares one train_step, and issue #6's distributed training gathers the
global batch), the likelihood is averaged over the batch's pairs, and the quantisation
term keeps the official weight relative to it: eta / N per example, where N =
``num_train`` (filled in from the training split by ``training.fit``).
"""

from __future__ import annotations

import keras

from keras_hashing import losses
from keras_hashing.layers import PACKAGE
from keras_hashing.methods.base import LinearCodeModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class DPSH(LinearCodeModel):
    """DPSH hashing model.

    Example:
        >>> import numpy as np
        >>> DPSH(bits=16, input_shape=(8, 8, 1), num_classes=10).encode(
        ...     np.zeros((1, 8, 8, 1), "uint8")).shape
        (1, 2)
    """

    method_name = "dpsh"
    default_params = {"eta": 10.0, "num_train": 5000}
    term_names = ("likelihood", "quantization")

    def loss_terms(self, outputs, targets):
        u = outputs["code"]
        similarity = losses.pairwise_similarity(targets, self.multi_label)
        terms = {"likelihood": losses.dpsh_likelihood_loss(u, similarity),
                 "quantization": losses.quantization_loss(u)}
        eta = self.params["eta"] / max(float(self.params["num_train"]), 1.0)
        terms["loss"] = terms["likelihood"] + eta * terms["quantization"]
        return terms
