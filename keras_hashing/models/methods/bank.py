"""DPSH's memory bank: the latest output of every training example, for pair losses.

The official DPSH code (jiangqy/DPSH-pytorch) keeps a table U (N_train x K) of every
training example's last output u and compares each batch with all of it: a batch of m
sees m x N pairs instead of m x m, so every image meets every class in every step. Each
step first writes the batch's own outputs into U (without gradient), then evaluates

    Theta_ij = 1/2 u_i^T U_j,   L = mean_ij [log(1 + e^Theta_ij) - S_ij Theta_ij]

with S between the batch's labels and the labels stored beside U. Rows not yet visited
are zero (Theta = 0: a constant log 2, no gradient) and their label is -1 (similar to
nothing).

Under ``tf.distribute`` every replica sees the gathered global batch (base.py), so the
replicas write the same rows; the tables are ``only_first_replica`` variables, the
first replica's write is kept, and all copies stay equal.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from keras_hashing.models import losses


def write_rows(variable, rows, values):
    """variable[rows] = values, in the replica context too.

    A mirrored variable has no scatter (TF raises NotImplementedError), so a table
    created under a strategy is assigned whole: a copy of N x K floats per step, small
    beside a CNN step. Otherwise it is a scatter.
    """
    try:
        variable.value.scatter_nd_update(rows, values)
    except NotImplementedError:
        variable.assign(tf.tensor_scatter_nd_update(variable.value, rows, values))


class MemoryBankMixin:
    """Adds ``u_bank`` / ``label_bank`` to a HashingModel and the bank likelihood.

    The model must set ``needs_index = True`` (training targets carry each example's
    position) and have a ``num_train`` and ``memory_bank`` parameter.
    """

    needs_index = True

    def build_bank(self):
        n = int(self.params["num_train"]) if self.params["memory_bank"] else 0
        width = self.num_classes if self.multi_label else 1
        self.u_bank = self.add_weight(shape=(n, self.bits), initializer="zeros",
                                      trainable=False, aggregation="only_first_replica",
                                      name="u_bank")
        empty_label = 0 if self.multi_label else -1  # similar to nothing
        self.label_bank = self.add_weight(
            shape=(n, width), initializer=keras.initializers.Constant(empty_label),
            trainable=False, aggregation="only_first_replica", name="label_bank")

    def pair_likelihood(self, u, targets):
        """The likelihood term of a batch: against the bank while training (targets
        carry {"label", "index"}); in-batch for validation batches or with
        ``memory_bank: false``."""
        labels = targets["label"] if isinstance(targets, dict) else targets
        if not isinstance(targets, dict) or not self.params["memory_bank"]:
            return losses.dpsh_likelihood_loss(
                u, losses.pairwise_similarity(labels, self.multi_label))
        rows = ops.reshape(ops.cast(targets["index"], "int32"), (-1, 1))
        width = self.label_bank.shape[1]
        write_rows(self.u_bank, rows, ops.stop_gradient(ops.cast(u, "float32")))
        write_rows(self.label_bank, rows, ops.reshape(ops.cast(labels, "float32"), (-1, width)))
        similarity = losses.cross_similarity(labels, self.label_bank.value, self.multi_label)
        return losses.dpsh_likelihood_loss(u, similarity, bank=self.u_bank.value)
