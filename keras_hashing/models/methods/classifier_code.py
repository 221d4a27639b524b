"""classifier-code: the trivial baseline of Sablayrolles, Douze, Jegou and Usunier, "How
should we evaluate supervised hashing?" (ICASSP 2017).

A plain classifier (the same backbone as the hashing methods, softmax cross-entropy, or
per-label sigmoid for multi-label data) whose code is its *predicted class* written in
bits. When relevance is "shares a class" and the query classes were seen in training,
this code scores about the classifier's accuracy in mAP, which is why a supervised
hashing table needs it as a row, and why the ``fmnist-unseen`` protocol (classes held out
of training) is the test that tells a learned metric from a classifier.

Codes (``params.code``):

* ``onehot``: bit c is set for the predicted class c, the other bits are 0 (the K - C
  padding bits are always 0). Every two different classes are 2 bits apart. Needs K >= C.
* ``binary``: the class id in ceil(log2 C) bits, padded with 0 bits to K. Fits any K
  from ceil(log2 C), but unrelated classes sit 1 to log2 C bits apart, by their ids.
* ``auto`` (default): onehot where K >= C, else binary.

Multi-label data: bit c is set for every label whose sigmoid is above 0.5 (needs K >= C).

Example:
    >>> import numpy as np
    >>> model = ClassifierCode(bits=12, input_shape=(8, 8, 1), num_classes=10)
    >>> bits = model.encode_bits(np.zeros((2, 8, 8, 1), "uint8"))
    >>> bits.shape, int(bits.sum(axis=1)[0])
    ((2, 12), 1)
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_hashing.models import losses
from keras_hashing.errors import ConfigError
from keras_hashing.models.layers import PACKAGE
from keras_hashing.models.methods.base import HashingModel

CODES = ("auto", "onehot", "binary")


def class_code_width(code: str, num_classes: int, multi_label: bool) -> tuple:
    """(resolved code kind, bits it uses) for ``num_classes`` classes.

    Example:
        >>> class_code_width("binary", 10, False)
        ('binary', 4)
    """
    if code not in CODES:
        raise ConfigError(f"classifier-code parameter code must be one of {', '.join(CODES)}, "
                          f"got {code!r}")
    if multi_label:
        if code == "binary":
            raise ConfigError("classifier-code: a binary class id cannot hold several labels; "
                              "use code: onehot with bits >= the number of labels")
        return "onehot", num_classes
    if code == "auto":
        code = "onehot"
    if code == "onehot":
        return code, num_classes
    return code, max(1, math.ceil(math.log2(num_classes)))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassifierCode(HashingModel):
    """A classifier whose code is its predicted class (see the module docstring)."""

    method_name = "classifier-code"
    default_params = {"code": "auto", "label_smoothing": 0.0}
    term_names = ("classification",)

    def build_head(self):
        code = self.params["code"]
        if code == "auto" and self.bits < self.num_classes and not self.multi_label:
            code = "binary"
        self.code_kind, width = class_code_width(code, self.num_classes, self.multi_label)
        if width > self.bits:
            raise ConfigError(
                f"classifier-code: a {self.code_kind} code of {self.num_classes} classes needs "
                f"{width} bits, got bits={self.bits}")
        self.classifier = keras.layers.Dense(self.num_classes,
                                             kernel_regularizer=self.kernel_regularizer(),
                                             name="classifier")

    def head(self, features, training=False):
        logits = self.classifier(features)
        return {"code": self._class_code(logits), "logits": logits}

    def _class_code(self, logits):
        """+1/-1 code (bit = code >= 0) of the predicted class; padding bits are -1."""
        if self.multi_label:
            bits = ops.cast(logits > 0, "float32")
        else:
            predicted = ops.argmax(logits, axis=-1)
            if self.code_kind == "onehot":
                bits = ops.one_hot(predicted, self.num_classes, dtype="float32")
            else:
                width = class_code_width("binary", self.num_classes, False)[1]
                powers = ops.convert_to_tensor([2 ** i for i in range(width)], "int32")
                bits = ops.cast((ops.cast(predicted, "int32")[:, None] // powers) % 2,
                                "float32")
        padding = self.bits - ops.shape(bits)[-1]
        bits = ops.pad(bits, [[0, 0], [0, padding]])
        return 2.0 * bits - 1.0

    def loss_terms(self, outputs, targets):
        terms = {"classification": losses.classification_loss(
            targets, outputs["logits"], self.multi_label, self.params["label_smoothing"])}
        terms["loss"] = terms["classification"]
        return terms
