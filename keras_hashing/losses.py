"""Loss terms of the hashing papers, as pure functions of tensors (``keras.ops``).

Each function is one term of one paper, named after it. Methods in ``methods/`` only
combine these terms with weights. Every function returns a scalar averaged over the
batch (per-example mean), so its value does not depend on the batch size.
"""

from __future__ import annotations

import keras
from keras import ops


def classification_loss(labels, logits, multi_label=False):
    """Softmax cross-entropy (single label) or per-label sigmoid cross-entropy (multi-hot).

    Formula:
        single: mean_n -log softmax(logits_n)[y_n]
        multi:  mean_n mean_c BCE(y_nc, sigmoid(logits_nc))

    Args:
        labels: int class ids (N,) or multi-hot (N, C).
        logits: (N, C) unnormalised scores.
        multi_label: use the per-label sigmoid form (SSDH's ``MultiLabelSigmoidLoss``).
    """
    if multi_label:
        per_example = ops.mean(keras.losses.binary_crossentropy(
            ops.cast(labels, logits.dtype)[..., None], logits[..., None], from_logits=True),
            axis=-1)
    else:
        per_example = keras.losses.sparse_categorical_crossentropy(
            ops.cast(labels, "int32"), logits, from_logits=True)
    return ops.mean(per_example)


def ssdh_binarization_loss(activations):
    """SSDH's E2: pushes sigmoid activations towards 0 or 1.

    Formula:
        E2 = -mean_n (1/K) * ||a_n - 0.5 * 1||^2        (in [-0.25, 0])

    -0.25 means every activation is saturated at 0 or 1; 0 means all sit at 0.5.

    Args:
        activations: (N, K) sigmoid outputs a in (0, 1).
    """
    return -ops.mean(ops.square(activations - 0.5))


def ssdh_balance_loss(activations):
    """SSDH's E3 (paper form): each image's code should be half ones, half zeros.

    Formula:
        E3 = mean_n (mean_k a_nk - 0.5)^2

    The authors' Caffe code averages over the batch before squaring; we follow the
    paper's per-image form, which is the stronger constraint.

    Args:
        activations: (N, K) sigmoid outputs.
    """
    return ops.mean(ops.square(ops.mean(activations, axis=-1) - 0.5))
