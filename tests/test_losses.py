import numpy as np
import pytest
import tensorflow as tf

from keras_hashing import losses


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


def test_ssdh_relaxed_terms_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    a0 = rng.uniform(0.1, 0.9, (3, 5))

    def total(a):
        return losses.ssdh_binarization_loss(a) + losses.ssdh_balance_loss(a)

    a = tf.Variable(a0)
    with tf.GradientTape() as tape:
        value = total(a)
    grad = tape.gradient(value, a).numpy()
    eps = 1e-6
    numeric = np.zeros_like(a0)
    for idx in np.ndindex(a0.shape):
        plus, minus = a0.copy(), a0.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (float(total(tf.constant(plus))) - float(total(tf.constant(minus)))) / (
            2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)
