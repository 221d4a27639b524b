"""Loss terms of the hashing papers, as pure functions of tensors (``keras.ops``).

Each function is one term of one paper, named after it. Methods in ``methods/`` only
combine these terms with weights. Every function returns a scalar averaged over the
batch (per-example mean), so its value does not depend on the batch size.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def classification_loss(labels, logits, multi_label=False, label_smoothing=0.0):
    """Softmax cross-entropy (single label) or per-label sigmoid cross-entropy (multi-hot).

    Formula:
        single: mean_n -sum_c q_nc log softmax(logits_n)_c,
                q_n = (1 - eps) onehot(y_n) + eps / C
        multi:  mean_n mean_c BCE((1 - eps) y_nc + eps / 2, sigmoid(logits_nc))

    Args:
        labels: int class ids (N,) or multi-hot (N, C).
        logits: (N, C) unnormalised scores.
        multi_label: use the per-label sigmoid form (SSDH's ``MultiLabelSigmoidLoss``).
        label_smoothing: eps in [0, 1); 0 is the plain cross-entropy.

    Example:
        >>> import numpy as np
        >>> logits = np.array([[2.0, 0.0, 0.0]], "float32")
        >>> round(float(classification_loss(np.array([0]), logits)), 4)
        0.2395
        >>> round(float(classification_loss(np.array([0]), logits, label_smoothing=0.3)), 4)
        0.6395
    """
    if multi_label:
        per_example = ops.mean(keras.losses.binary_crossentropy(
            ops.cast(labels, logits.dtype)[..., None], logits[..., None], from_logits=True,
            label_smoothing=label_smoothing), axis=-1)
    elif label_smoothing:
        onehot = ops.one_hot(ops.cast(labels, "int32"), ops.shape(logits)[-1],
                             dtype=logits.dtype)
        per_example = keras.losses.categorical_crossentropy(
            onehot, logits, from_logits=True, label_smoothing=label_smoothing)
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


def pairwise_similarity(labels, multi_label=False):
    """S_ij = 1 when items i and j are similar (same label / a shared label), else 0.

    Formula:
        single: S_ij = [y_i == y_j]
        multi:  S_ij = [y_i . y_j > 0]

    Args:
        labels: (N,) class ids or (N, C) multi-hot.
    """
    if multi_label:
        y = ops.cast(labels, "float32")
        return ops.cast(ops.matmul(y, ops.transpose(y)) > 0, "float32")
    y = ops.reshape(labels, (-1,))
    return ops.cast(ops.equal(y[:, None], y[None, :]), "float32")


def cross_similarity(labels, other_labels, multi_label=False):
    """S_ij = 1 when item i of one set and item j of another are similar, else 0.

    The rectangular form of ``pairwise_similarity``: a batch against a memory bank.
    A class id of -1 (an empty bank row) is similar to nothing.

    Args:
        labels: (n,) class ids or (n, C) multi-hot.
        other_labels: (N,) class ids or (N, C) multi-hot.
    """
    if multi_label:
        y = ops.cast(labels, "float32")
        return ops.cast(ops.matmul(y, ops.transpose(ops.cast(other_labels, "float32"))) > 0,
                        "float32")
    a = ops.cast(ops.reshape(labels, (-1,)), "float32")
    b = ops.cast(ops.reshape(other_labels, (-1,)), "float32")
    return ops.cast(ops.logical_and(ops.equal(a[:, None], b[None, :]), b[None, :] >= 0),
                    "float32")


def squared_distances(codes):
    """(N, N) squared Euclidean distances between rows, clipped at 0 (float noise)."""
    sq = ops.sum(ops.square(codes), axis=-1)
    return ops.maximum(sq[:, None] + sq[None, :] - 2.0 * ops.matmul(codes, ops.transpose(codes)),
                       0.0)


def dsh_pair_loss(codes, similarity, margin):
    """DSH's contrastive term over every pair i < j of the batch (Liu et al., CVPR 2016).

    Formula:
        D_ij = ||b_i - b_j||^2
        L = sum_{i<j} [ 1/2 S_ij D_ij + 1/2 (1 - S_ij) max(m - D_ij, 0) ] / (n (n - 1))

    The hinge is on the squared distance, and the sum is divided by n(n-1), both as
    in the authors' ``hashing_loss_layer.cpp``.

    Args:
        codes: (n, K) real-valued outputs b.
        similarity: (n, n) 1 for similar pairs, 0 for dissimilar (DSH's y = 1 - S).
        margin: m (the authors use m = 2K).
    """
    n = ops.cast(ops.shape(codes)[0], codes.dtype)
    d = squared_distances(codes)
    per_pair = 0.5 * similarity * d + 0.5 * (1.0 - similarity) * ops.relu(margin - d)
    upper = ops.triu(ops.ones_like(d), k=1)
    return ops.sum(per_pair * upper) / ops.maximum(n * (n - 1.0), 1.0)


def dsh_regularizer(codes):
    """DSH's regulariser pulling every output towards +-1.

    Formula:
        R = (1/n) sum_i || |b_i| - 1 ||_1
    """
    return ops.mean(ops.sum(ops.abs(ops.abs(codes) - 1.0), axis=-1))


def dpsh_likelihood_loss(codes, similarity, bank=None):
    """DPSH's negative log-likelihood of the pairwise labels (Li et al., IJCAI 2016).

    Formula:
        Theta_ij = 1/2 u_i^T v_j      (v = u in-batch, v = the memory bank U otherwise)
        L = mean_ij [ log(1 + exp(Theta_ij)) - S_ij Theta_ij ]

    log(1 + e^x) is ``softplus``, computed stably (as log(1 + e^-|x|) + max(x, 0)).

    Args:
        codes: (n, K) real-valued outputs u.
        similarity: (n, n) 0/1, or (n, N) against ``bank``.
        bank: optional (N, K) constant outputs of every training example (the authors'
            U); no gradient flows into it.
    """
    other = codes if bank is None else ops.stop_gradient(ops.convert_to_tensor(bank))
    theta = 0.5 * ops.matmul(codes, ops.transpose(other))
    return ops.mean(ops.softplus(theta) - similarity * theta)


def sign_pm1(x):
    """-1/+1 sign of a tensor, sign(0) = +1, without a gradient of its own (the one
    place the +-1 convention is written for tensors; ``codes.sign_pm1`` for numpy)."""
    return ops.where(x >= 0, ops.ones_like(x), -ops.ones_like(x))


def quantization_loss(codes):
    """Squared distance from the outputs to their signs (DPSH / DMRH quantisation term).

    Formula:
        Q = mean_i ||b_i - u_i||^2,   b = sign(u) (sign(0) = +1), no gradient through b
    """
    b = ops.stop_gradient(sign_pm1(codes))
    return ops.mean(ops.sum(ops.square(b - codes), axis=-1))


def sdsh_spring_loss(embeddings, similarity, sparse=False):
    """SDSH's "spring" triplet loss on unit-sphere embeddings (Pidhorskyi et al., ACCV 2018).

    Formula:
        for every valid in-batch triplet (q, p, n): p != q similar to q, n dissimilar
        D = ||q - p||^2 - ||q - n||^2 = 2 q.n - 2 q.p            (in [-4, 4])
        E = (sqrt(8) - sqrt(4 - D))^2, averaged over the valid triplets

    No margin: the minimum is at p = q, n = -q. A batch without a valid triplet gives 0.

    Args:
        embeddings: (n, K) L2-normalised rows.
        similarity: (n, n) 0/1.
        sparse: the same value, computed over the (q, p) positive pairs only, (P, n)
            instead of (n, n, n): about 1/C of the work with C balanced classes, but a
            data-dependent shape (for CPUs; the dense form suits XLA on accelerators).
    """
    dots = ops.matmul(embeddings, ops.transpose(embeddings))
    n = ops.shape(embeddings)[0]
    not_self = 1.0 - ops.eye(n, dtype=dots.dtype)
    positive = similarity * not_self                 # (q, p)
    negative = 1.0 - similarity                      # (q, n)
    if sparse:
        q, p = ops.nonzero(positive > 0)
        q_dot_p = ops.take(ops.reshape(dots, (-1,)), q * n + p)  # (P,)
        d = 2.0 * ops.take(dots, q, axis=0) - 2.0 * q_dot_p[:, None]  # D[(q, p), n]
        valid = ops.take(negative, q, axis=0)
    else:
        valid = positive[:, :, None] * negative[:, None, :]
        d = 2.0 * dots[:, None, :] - 2.0 * dots[:, :, None]  # D[q, p, n]
    energy = ops.square(math.sqrt(8.0) - ops.sqrt(ops.maximum(4.0 - d, 1e-12)))
    return ops.sum(energy * valid) / ops.maximum(ops.sum(valid), 1.0)


# -- BDNN (Do, Doan, Cheung, ECCV 2016) -------------------------------------------------
# H is (m, L) here: one row per example (the paper writes it L x m). Every term is the
# paper's with its lambda left out; the model multiplies by lambda2..lambda5.


def bdnn_equality_loss(codes, binary):
    """Equality term: H close to the auxiliary binary codes B.

    Formula:
        E = 1/(2m) ||H - B||^2

    Args:
        codes: (m, L) real outputs H.
        binary: (m, L) auxiliary codes B in {-1, +1}, no gradient.
    """
    m = ops.cast(ops.shape(codes)[0], codes.dtype)
    return ops.sum(ops.square(codes - ops.stop_gradient(binary))) / (2.0 * m)


def bdnn_independence_loss(codes):
    """Independence term: bits uncorrelated and of unit variance.

    Formula:
        I = 1/2 ||(1/m) H^T H - I_L||^2
    """
    m = ops.cast(ops.shape(codes)[0], codes.dtype)
    bits = ops.shape(codes)[1]
    gram = ops.matmul(ops.transpose(codes), codes) / m
    return 0.5 * ops.sum(ops.square(gram - ops.eye(bits, dtype=codes.dtype)))


def bdnn_balance_loss(codes):
    """Balance term: each bit +1 on half the examples.

    Formula:
        Bal = 1/(2m) ||H^T 1||^2   (the sum over examples of each bit, squared)
    """
    m = ops.cast(ops.shape(codes)[0], codes.dtype)
    return ops.sum(ops.square(ops.sum(codes, axis=0))) / (2.0 * m)


def bdnn_similarity_loss(codes, similarity):
    """SH-BDNN's supervised term: code inner products match the +-1 label similarity.

    Formula:
        S_pm = 2 S - 1   (+1 similar, -1 dissimilar)
        Sim = 1/(2m) ||(1/L) H H^T - S_pm||^2

    Args:
        codes: (m, L) real outputs H.
        similarity: (m, m) 0/1 (``pairwise_similarity``).
    """
    m = ops.cast(ops.shape(codes)[0], codes.dtype)
    bits = ops.cast(ops.shape(codes)[1], codes.dtype)
    inner = ops.matmul(codes, ops.transpose(codes)) / bits
    return ops.sum(ops.square(inner - (2.0 * similarity - 1.0))) / (2.0 * m)


def bdnn_reconstruction_loss(inputs, reconstruction):
    """UH-BDNN's reconstruction term (the decoder is fed B, not H).

    Formula:
        R = 1/(2m) ||X - (W B + c)||^2
    """
    m = ops.cast(ops.shape(inputs)[0], inputs.dtype)
    return ops.sum(ops.square(inputs - reconstruction)) / (2.0 * m)


# -- the field's later baselines: CSQ, OrthoHash, HashNet, GreedyHash --------------------


def csq_center_loss(logits, centers):
    """CSQ's central similarity term: each code towards its hash center (Yuan et al., 2020).

    Formula:
        u = tanh(z),  t = (c + 1) / 2
        L = mean_{n,k} BCE((u_nk + 1) / 2, t_nk)
          = mean_{n,k} softplus(2 z_nk) - 2 z_nk t_nk     ((1 + tanh z) / 2 = sigmoid(2z))

    The second line is the same value computed without log(0) when tanh saturates.

    Args:
        logits: (N, K) pre-tanh outputs z.
        centers: (N, K) each example's hash center c in {-1, +1} (no gradient).

    Example:
        >>> import numpy as np
        >>> z = np.arctanh(np.full((1, 4), 0.5, "float32"))
        >>> round(float(csq_center_loss(z, np.ones((1, 4), "float32"))), 6)  # -log 0.75
        0.287682
    """
    t = (ops.stop_gradient(ops.cast(centers, logits.dtype)) + 1.0) / 2.0
    return ops.mean(ops.softplus(2.0 * logits) - 2.0 * logits * t)


def csq_quantization_loss(codes):
    """CSQ's quantisation term: tanh outputs towards -1 or +1.

    Formula:
        Q = mean_{n,k} (|u_nk| - 1)^2
    """
    return ops.mean(ops.square(ops.abs(codes) - 1.0))


def cosine_logits(features, codebook, epsilon=1e-12):
    """Cosine similarity of each row of ``features`` with each codeword (OrthoHash).

    Formula:
        cos_nc = <v_n, o_c> / (||v_n|| ||o_c||)
    with ``epsilon`` added under the square roots (the authors' code divides by ||v|| as
    is, so an all-zero v gives NaN).
    """
    v = features / ops.sqrt(ops.sum(ops.square(features), axis=-1, keepdims=True) + epsilon)
    o = ops.cast(codebook, features.dtype)
    o = o / ops.sqrt(ops.sum(ops.square(o), axis=-1, keepdims=True) + epsilon)
    return ops.matmul(v, ops.transpose(o))


def orthohash_loss(cosines, labels, scale=8.0, margin=0.2, multi_label=False,
                   angular=False):
    """OrthoHash's cross-entropy over margin cosine logits (Hoe et al., NeurIPS 2021).

    Formula:
        OrthoCos (angular=False):  l_nc = s (cos_nc - m y_nc)
        OrthoArc (angular=True):   l_nc = s cos(acos(clip(cos_nc, +-0.99999)) + m y_nc)
        single label: L = mean_n -log softmax(l_n)_{y_n}
        multi-label:  L = mean_n -sum_c (y_nc / sum_c y_nc) log softmax(l_n)_c
    with y the one-hot (or multi-hot) labels.

    Args:
        cosines: (N, C) cosine of each code with each class's codeword.
        labels: (N,) class ids or (N, C) multi-hot.
        scale: s. margin: m.
    """
    num_classes = ops.shape(cosines)[-1]
    if multi_label:
        y = ops.cast(labels, cosines.dtype)
    else:
        y = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), num_classes,
                        dtype=cosines.dtype)
    if angular:
        theta = ops.arccos(ops.clip(cosines, -0.99999, 0.99999))
        logits = scale * ops.cos(theta + margin * y)
    else:
        logits = scale * (cosines - margin * y)
    weights = y / ops.maximum(ops.sum(y, axis=-1, keepdims=True), 1.0)
    return ops.mean(-ops.sum(weights * ops.log_softmax(logits, axis=-1), axis=-1))


def hashnet_pair_loss(codes, similarity, alpha):
    """HashNet's weighted pairwise likelihood over every pair of the batch (Cao et al.,
    ICCV 2017), self-pairs included.

    Formula:
        d_ij = alpha <h_i, h_j>
        l_ij = log(1 + e^{d_ij}) - s_ij d_ij       (as log(1 + e^-|d|) + max(d, 0) - s d)
        L = mean_{s_ij = 1} l_ij + mean_{s_ij = 0} l_ij
    which is the paper's sum with similar pairs weighted |S| / |S1| and dissimilar ones
    |S| / |S0|, divided by |S|; an empty set contributes 0.

    Args:
        codes: (N, K) tanh outputs h.
        similarity: (N, N) 0/1.
        alpha: the sigmoid's scale (the authors: 10 / K).
    """
    d = alpha * ops.matmul(codes, ops.transpose(codes))
    s = ops.cast(similarity, d.dtype)
    pair = ops.log1p(ops.exp(-ops.abs(d))) + ops.maximum(d, 0.0) - s * d
    positive = ops.sum(pair * s) / ops.maximum(ops.sum(s), 1.0)
    negative = ops.sum(pair * (1.0 - s)) / ops.maximum(ops.sum(1.0 - s), 1.0)
    return positive + negative


def greedyhash_penalty(codes):
    """GreedyHash's cubic penalty pulling the pre-sign outputs to +-1 (Su et al., 2018).

    Formula:
        P = mean_{n,k} | (|h_nk| - 1)^3 |
    """
    return ops.mean(ops.abs(ops.power(ops.abs(codes) - 1.0, 3)))
