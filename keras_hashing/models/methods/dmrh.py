"""DMRH: deep multi-region hashing (Zhou et al., ICASSP 2020).

Model: a convolutional backbone stopped at its last feature map -> a fully convolutional
head (a ``head_kernel`` x ``head_kernel`` conv + ReLU, then a 1x1 conv to K channels: a
dense hash layer applied at every position) -> average pooling over each cell of an
N x N grid -> one real code per region u_r (N^2 of them). Training fuses them by a
weighted average u = sum_r softmax(a)_r u_r (``fusion: learned``; ``uniform`` fixes the
weights equal) and applies DPSH's pairwise likelihood plus quantisation:

    Theta_ij = 1/2 u_i^T u_j
    L = mean_ij [log(1 + e^Theta_ij) - S_ij Theta_ij] + eta mean_i ||sign(u_i) - u_i||^2

with eta = 0.02. The query code is sign of the plain mean of the region outputs
(``query_fusion: mean``, as the issue specifies); ``query_fusion: weighted`` uses the
trained fusion weights instead. Evaluation scores the other one too
(``metrics["query"]["ablations"]``). N = 1 is DPSH on a globally pooled code.

Grid cells are adaptive (PyTorch's AdaptiveAvgPool2d): cell i of n along a side of length
s spans [floor(i s / n), ceil((i + 1) s / n)), so cells overlap when n does not divide s
(the lenet map at 28x28 is 4x4; N = 3 gives cells of 2 overlapping by 1).

Departures, and why: the authors use an ImageNet CNN-F; here any convolutional backbone
of ``backbones`` (lenet on Fashion-MNIST), trained from scratch. Pairs are in-batch with
the likelihood averaged over them, as in our DPSH. The Fashion-MNIST recipe's head conv
is 3x3 and its fusion uniform (the class defaults stay 1x1 and learned, so older saved
models load unchanged): on lenet's 4x4 map a 1x1 head sees one position at a time,
where DPSH's dense layer sees the whole map.

Measurements behind these choices: docs/METHOD_NOTES.md.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_hashing.models import losses
from keras_hashing.errors import ConfigError
from keras_hashing.models.layers import PACKAGE
from keras_hashing.models.methods.base import HashingModel


def grid_cells(size: int, n: int) -> list:
    """[(start, end), ...] of n adaptive cells along a side of ``size``.

    Example:
        >>> grid_cells(4, 3)
        [(0, 2), (1, 3), (2, 4)]
    """
    return [(math.floor(i * size / n), math.ceil((i + 1) * size / n)) for i in range(n)]


@keras.saving.register_keras_serializable(package=PACKAGE)
class DMRH(HashingModel):
    """DMRH hashing model.

    Example:
        >>> import numpy as np
        >>> m = DMRH(bits=16, input_shape=(28, 28, 1), num_classes=10, backbone="lenet",
        ...          params={"grid": 2})
        >>> out = m(np.zeros((3, 28, 28, 1), "float32"))
        >>> tuple(out["regions"].shape), tuple(out["code"].shape)
        ((3, 4, 16), (3, 16))
    """

    method_name = "dmrh"
    spatial_features = True
    default_params = {"grid": 2, "eta": 0.02, "hidden": 256, "head_kernel": 1,
                      "fusion": "learned", "query_fusion": "mean"}
    param_choices = {"fusion": ("learned", "uniform"), "query_fusion": ("mean", "weighted")}
    term_names = ("likelihood", "quantization")

    def build_head(self):
        n = int(self.params["grid"])
        if n < 1:
            raise ConfigError(f"dmrh: grid must be >= 1, got {n}")
        for key, choices in self.param_choices.items():
            if self.params[key] not in choices:
                raise ConfigError(f"dmrh: {key} must be {' or '.join(map(repr, choices))}, "
                                  f"got {self.params[key]!r}")
        h, w = self.backbone.output_shape[1:3]
        if n > min(h, w):
            raise ConfigError(f"dmrh: a {n}x{n} grid needs a feature map of at least "
                              f"{n}x{n}; the backbone gives {h}x{w}")
        self.cells = [(r, c) for r in grid_cells(h, n) for c in grid_cells(w, n)]
        reg = self.kernel_regularizer()
        kernel = int(self.params["head_kernel"])
        if kernel < 1:
            raise ConfigError(f"dmrh: head_kernel must be >= 1, got {kernel}")
        self.region_fc = keras.layers.Conv2D(int(self.params["hidden"]), kernel,
                                             padding="same", activation="relu",
                                             kernel_regularizer=reg, name="region_fc")
        self.hash_conv = keras.layers.Conv2D(self.bits, 1, kernel_regularizer=reg,
                                             name="hash_conv")
        # With one region there is nothing to weigh: a trainable logit would get no
        # gradient, and Keras warns about it on every step ("Gradients do not exist").
        self.fusion_logits = self.add_weight(shape=(len(self.cells),), initializer="zeros",
                                             trainable=(len(self.cells) > 1 and
                                                        self.params["fusion"] == "learned"),
                                             name="fusion_logits")

    def head(self, features, training=False):
        u_map = self.hash_conv(self.region_fc(features))  # (B, h, w, K)
        regions = ops.stack([ops.mean(u_map[:, r0:r1, c0:c1, :], axis=(1, 2))
                             for (r0, r1), (c0, c1) in self.cells], axis=1)  # (B, N^2, K)
        if len(self.cells) == 1:  # N = 1: one region, nothing to weigh
            fused = regions[:, 0, :]
        else:
            fused = ops.einsum("r,brk->bk", ops.softmax(self.fusion_logits), regions)
        code = fused if self.params["query_fusion"] == "weighted" else ops.mean(regions, axis=1)
        return {"code": code, "fused": fused, "regions": regions}

    def prediction_extras(self, outputs):
        # the fused code the query does not use, for the ablation below; computed at
        # predict time only, so training gathers no extra output across replicas
        if self.params["query_fusion"] == "mean":
            return {"fused": outputs["fused"]}
        return {"mean": ops.mean(outputs["regions"], axis=1)}

    def query_ablations(self):
        # The loss trains the weighted fusion; the query code is the plain mean (or the
        # other way round with query_fusion: weighted): score the one not used. Equal
        # weights make the two the same code.
        if self.params["fusion"] == "uniform" or len(self.cells) == 1:
            return {}
        if self.params["query_fusion"] == "mean":
            return {"weighted_fusion": lambda out: out["fused"] >= 0}
        return {"mean_of_regions": lambda out: out["mean"] >= 0}

    def loss_terms(self, outputs, targets):
        u = outputs["fused"]
        similarity = losses.pairwise_similarity(targets, self.multi_label)
        terms = {"likelihood": losses.dpsh_likelihood_loss(u, similarity),
                 "quantization": losses.quantization_loss(u)}
        terms["loss"] = terms["likelihood"] + self.params["eta"] * terms["quantization"]
        return terms
