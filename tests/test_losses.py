import numpy as np
import pytest
import tensorflow as tf

from keras_hashing.models import losses


def test_ssdh_binarization_golden():
    a = np.array([[0.5, 1.0], [0.0, 0.75]], np.float32)
    # -(1/K) ||a - .5||^2 per image: -(0 + .25)/2, -(.25 + .0625)/2; mean over images
    expected = -((0.25 / 2) + (0.3125 / 2)) / 2
    assert float(losses.ssdh_binarization_loss(a)) == pytest.approx(expected)


def test_ssdh_binarization_bounds():
    assert float(losses.ssdh_binarization_loss(np.full((3, 4), .5, np.float32))) == 0.0
    saturated = np.array([[0.0, 1.0, 1.0, 0.0]], np.float32)
    assert float(losses.ssdh_binarization_loss(saturated)) == pytest.approx(-0.25)


def test_ssdh_balance_golden():
    a = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]], np.float32)
    # image means .75 and .5 -> ((.25)^2 + 0) / 2
    assert float(losses.ssdh_balance_loss(a)) == pytest.approx(0.03125)


def test_classification_loss_golden():
    logits = np.log(np.array([[0.5, 0.25, 0.25]], np.float32))
    assert float(losses.classification_loss(np.array([0]), logits)) == pytest.approx(np.log(2),
                                                                                    rel=1e-5)
    multi = losses.classification_loss(np.array([[1, 0]]), np.array([[0.0, 0.0]], np.float32),
                                       multi_label=True)
    assert float(multi) == pytest.approx(np.log(2), rel=1e-5)


def test_label_smoothing_golden():
    # probabilities (.5, .25, .25), eps = .3: targets (.8, .1, .1)
    logits = np.log(np.array([[0.5, 0.25, 0.25]], np.float32))
    smoothed = losses.classification_loss(np.array([0]), logits, label_smoothing=0.3)
    assert float(smoothed) == pytest.approx(-(0.8 * np.log(0.5) + 0.2 * np.log(0.25)), rel=1e-5)
    # multi-hot: targets (1, 0) become (.9, .1) against sigmoid(0) = .5 -> log 2 regardless,
    # so use logits 2: BCE(.9, s) and BCE(.1, s) with s = sigmoid(2)
    s2 = 1 / (1 + np.exp(-2.0))
    multi = losses.classification_loss(np.array([[1, 0]]), np.array([[2.0, 2.0]], np.float32),
                                       multi_label=True, label_smoothing=0.2)
    expected = (-(0.9 * np.log(s2) + 0.1 * np.log(1 - s2))
                - (0.1 * np.log(s2) + 0.9 * np.log(1 - s2))) / 2
    assert float(multi) == pytest.approx(expected, rel=1e-5)


def test_ssdh_relaxed_terms_gradient_matches_finite_differences():
    a0 = np.random.default_rng(0).uniform(0.1, 0.9, (3, 5))
    _finite_difference_check(
        lambda a: losses.ssdh_binarization_loss(a) + losses.ssdh_balance_loss(a), a0,
        rtol=1e-5)


def test_pairwise_similarity_single_and_multi_label():
    s = losses.pairwise_similarity(np.array([1, 2, 1])).numpy()
    assert s.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    m = losses.pairwise_similarity(np.array([[1, 0], [1, 1], [0, 1]]), multi_label=True).numpy()
    assert m.tolist() == [[1, 1, 0], [1, 1, 1], [0, 1, 1]]


B3 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
S3 = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.float32)


def test_cross_similarity_against_a_bank():
    s = losses.cross_similarity(np.array([1, 2]), np.array([1, -1, 2, 1])).numpy()
    assert s.tolist() == [[1, 0, 0, 1], [0, 0, 1, 0]]  # -1 (an empty bank row): nothing
    m = losses.cross_similarity(np.array([[1, 0]]), np.array([[1, 1], [0, 1], [0, 0]]),
                                multi_label=True).numpy()
    assert m.tolist() == [[1, 0, 0]]


def test_dpsh_against_a_bank_golden_and_no_gradient_into_the_bank():
    u = np.array([[1.0, -1.0]], np.float32)
    bank = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)  # Theta = 1, 0
    s = np.array([[1.0, 0.0]], np.float32)
    expected = ((np.log1p(np.e) - 1.0) + np.log(2.0)) / 2
    assert float(losses.dpsh_likelihood_loss(u, s, bank=bank)) == pytest.approx(expected, rel=1e-6)
    u_var, bank_var = tf.Variable(u), tf.Variable(bank)
    with tf.GradientTape() as tape:
        loss = losses.dpsh_likelihood_loss(u_var, s, bank=bank_var)
    g_u, g_bank = tape.gradient(loss, [u_var, bank_var])
    assert g_bank is None
    # d/du mean_j[...] = 1/2 mean_j (sigmoid(Theta_j) - S_j) U_j = 1/4 (sigmoid(1) - 1) (2, 0)
    np.testing.assert_allclose(g_u.numpy(), [[0.5 * (1 / (1 + np.exp(-1.0)) - 1), 0.0]],
                               rtol=1e-5)


def test_dsh_golden():
    # D01 = 2 (dissimilar: 1/2 max(4-2, 0) = 1), D02 = 1 (similar: 1/2), D12 = 1 (3/2)
    assert float(losses.dsh_pair_loss(B3, S3, 4.0)) == pytest.approx(3.0 / 6.0)
    # | |b| - 1 |_1 per row: 1, 1, 0
    assert float(losses.dsh_regularizer(B3)) == pytest.approx(2.0 / 3.0)


def test_dpsh_golden():
    theta = 0.5 * B3 @ B3.T
    expected = np.mean(np.log1p(np.exp(theta)) - S3 * theta)
    assert float(losses.dpsh_likelihood_loss(B3, S3)) == pytest.approx(expected, rel=1e-6)
    # sign(0.5) = 1, sign(-0.2) = -1: (0.5)^2 + (0.8)^2
    assert float(losses.quantization_loss(np.array([[0.5, -0.2]], np.float32))) == \
        pytest.approx(0.89)
    big = np.array([[60.0, 60.0]], np.float32)  # softplus stays finite at large Theta
    assert np.isfinite(float(losses.dpsh_likelihood_loss(big, np.ones((1, 1), np.float32))))


@pytest.mark.parametrize("sparse", [False, True])
def test_spring_golden(sparse):
    e = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    s = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32)
    assert float(losses.sdsh_spring_loss(e, s, sparse)) == pytest.approx(0.0, abs=1e-5)  # ideal
    # q = p = n: D = 0 -> E = (sqrt 8 - 2)^2 for both valid triplets
    same = np.array([[1.0, 0.0]] * 3, np.float32)
    assert float(losses.sdsh_spring_loss(same, s, sparse)) == pytest.approx(
        (np.sqrt(8) - 2) ** 2, rel=1e-5)
    # no valid triplet (all similar) -> 0, not NaN
    assert float(losses.sdsh_spring_loss(same, np.ones((3, 3), np.float32), sparse)) == 0.0


def test_spring_sparse_and_dense_forms_agree_in_value_and_gradient():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 4, 40)
    s = (y[:, None] == y[None, :]).astype(np.float32)
    results = []
    for sparse in (False, True):
        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            loss = losses.sdsh_spring_loss(v, s, sparse=sparse)
        results.append((float(loss), tape.gradient(loss, v).numpy()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)


def _finite_difference_check(fn, x0, rtol=1e-4):
    x = tf.Variable(x0)
    with tf.GradientTape() as tape:
        value = fn(x)
    grad = tape.gradient(value, x).numpy()
    eps = 1e-6
    numeric = np.zeros_like(x0)
    for idx in np.ndindex(x0.shape):
        plus, minus = x0.copy(), x0.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (float(fn(tf.constant(plus))) - float(fn(tf.constant(minus)))) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("term", ["dsh", "dpsh", "spring"])
def test_relaxed_terms_gradient_matches_finite_differences(term):
    rng = np.random.default_rng(1)
    s = (rng.integers(0, 3, 5)[:, None] == rng.integers(0, 3, 5)[None, :]).astype(np.float64)
    s = np.triu(s) + np.triu(s, 1).T  # symmetric
    np.fill_diagonal(s, 1)
    x0 = rng.normal(size=(5, 4))
    if term == "dsh":
        fn = lambda x: losses.dsh_pair_loss(x, s, 3.0)  # noqa: E731
    elif term == "dpsh":
        fn = lambda x: losses.dpsh_likelihood_loss(x, s)  # noqa: E731
    else:
        def fn(x):
            z = x / tf.norm(x, axis=1, keepdims=True)
            return losses.sdsh_spring_loss(z, s)
    _finite_difference_check(fn, x0)


# -- BDNN -----------------------------------------------------------------------------
H2 = np.array([[1.0, -0.5], [0.5, 1.0], [-1.0, 0.0]], np.float32)  # m = 3, L = 2


def test_bdnn_equality_golden():
    b = np.array([[1, -1], [1, 1], [-1, 1]], np.float32)
    # ||H - B||^2 = .25 + .25 + 1 = 1.5, / (2 m = 6)
    assert float(losses.bdnn_equality_loss(H2, b)) == pytest.approx(0.25)


def test_bdnn_independence_golden():
    # H^T H = [[2.25, 0], [0, 1.25]]; / 3 - I = diag(-.25, -7/12) -> 1/2 (.0625 + 49/144)
    assert float(losses.bdnn_independence_loss(H2)) == pytest.approx(0.5 * (0.0625 + 49 / 144))


def test_bdnn_balance_golden():
    # column sums (.5, .5) -> .5 / (2 m = 6)
    assert float(losses.bdnn_balance_loss(H2)) == pytest.approx(0.5 / 6)


def test_bdnn_similarity_golden():
    s = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    inner = H2 @ H2.T / 2  # diag 0.625 0.625 0.5; off (0, -0.5, -0.25)
    expected = ((inner - (2 * s - 1)) ** 2).sum() / 6
    assert float(losses.bdnn_similarity_loss(H2, s)) == pytest.approx(expected)
    # by hand: diag (.375^2 * 2 + .5^2) + off 2 * (1 + .25 + .5625)
    assert expected == pytest.approx((2 * 0.140625 + 0.25 + 2 * 1.8125) / 6)


def test_bdnn_reconstruction_golden():
    x = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    assert float(losses.bdnn_reconstruction_loss(x, np.zeros_like(x))) == pytest.approx(0.25)


@pytest.mark.parametrize("term", ["sh-bdnn", "uh-bdnn"])
def test_bdnn_relaxed_terms_gradient_matches_finite_differences(term):
    rng = np.random.default_rng(2)
    s = (rng.integers(0, 2, 5)[:, None] == rng.integers(0, 2, 5)[None, :]).astype(np.float64)
    s = np.triu(s) + np.triu(s, 1).T
    b = np.where(rng.normal(size=(5, 3)) >= 0, 1.0, -1.0)
    if term == "sh-bdnn":
        fn = lambda h: (losses.bdnn_similarity_loss(h, s)  # noqa: E731
                        + losses.bdnn_independence_loss(h) + losses.bdnn_balance_loss(h))
    else:
        fn = lambda h: (losses.bdnn_equality_loss(h, b)  # noqa: E731
                        + losses.bdnn_independence_loss(h))
    _finite_difference_check(fn, rng.normal(size=(5, 3)))


def test_dmrh_fused_likelihood_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    s = np.eye(4) + np.eye(4)[::-1]
    weights = np.array([0.1, 0.2, 0.3, 0.4])

    def fn(regions):  # (batch 4, 4 regions, K 3) -> weighted fusion -> DPSH likelihood
        return losses.dpsh_likelihood_loss(tf.einsum("r,brk->bk", weights, regions), s)

    _finite_difference_check(fn, rng.normal(size=(4, 4, 3)))
