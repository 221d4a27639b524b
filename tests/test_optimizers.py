"""training/optimizers.py: the schedule, decoupled and coupled weight decay, and RMSprop as
PyTorch computes it."""

import keras
import numpy as np
import pytest


@pytest.mark.parametrize("schedule, end", [("cosine", 0.0), ("constant", 0.01)])
def test_learning_rate_warms_up_then_follows_its_schedule(schedule, end):
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.optimizers import make_optimizer

    cfg = resolve_config(overrides={"epochs": 10, "learning_rate": 0.01,
                                    "lr_schedule": schedule, "lr_warmup_epochs": 2})
    schedule_of = make_optimizer(cfg, steps_per_epoch=100)._learning_rate
    rates = [float(schedule_of(step)) for step in (0, 100, 200, 600, 1000)]
    # linear from 0 over the 200 warm-up steps, then the schedule from the full rate
    assert rates[:3] == pytest.approx([0.0, 0.005, 0.01], abs=1e-7)
    assert rates[3] == pytest.approx(0.005 if schedule == "cosine" else 0.01, abs=1e-6)
    assert rates[4] == pytest.approx(end, abs=1e-7)


def test_warm_up_as_long_as_training_is_refused():
    from keras_hashing.training.config import resolve_config
    from keras_hashing.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lr_warmup_epochs \(5\) must be fewer than epochs"):
        resolve_config(overrides={"epochs": 5, "lr_warmup_epochs": 5})


def test_adamw_decays_the_weights_and_drops_the_l2_term():
    import keras
    import numpy as np

    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.optimizers import l2_weight_decay, make_optimizer

    cfg = resolve_config(overrides={"optimizer": "adamw", "weight_decay": 0.1,
                                    "lr_schedule": "constant", "learning_rate": 0.5})
    assert l2_weight_decay(cfg) == 0.0
    assert l2_weight_decay({**cfg, "optimizer": "adam"}) == 0.1
    optimizer = make_optimizer(cfg, steps_per_epoch=10)
    kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
    bias = keras.Variable(np.ones(2, np.float32), name="bias")
    optimizer.apply([np.zeros((2, 2), np.float32), np.zeros(2, np.float32)], [kernel, bias])
    # zero gradients: only the decoupled decay moves the kernel, w -= lr * wd * w; the bias
    # is excluded from decay
    assert np.allclose(kernel.numpy(), 1 - 0.5 * 0.1)
    assert np.allclose(bias.numpy(), 1.0)


# torch 2.13.0 (CPU, float64): torch.optim.RMSprop([theta], lr=0.01, weight_decay=0.1)
# on loss = sum(c * (theta - t)^2), c = (1, 2, 3), t = (1, 0, -1), theta0 = (.5, -1, 2);
# theta after each of three steps
TORCH_RMSPROP_STEPS = [[0.5999999895, -0.9000000024, 1.9000000005],
                       [0.6616436471, -0.8329179642, 1.8303242405],
                       [0.7071583922, -0.7799822688, 1.7739044002]]


def _three_steps(optimizer):
    c, t = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, -1.0])
    theta = keras.Variable(np.array([0.5, -1.0, 2.0]), dtype="float64")
    seen = []
    for _ in range(3):
        gradient = 2 * c * (theta.numpy() - t)
        optimizer.apply([gradient], [theta])
        seen.append(theta.numpy().tolist())
    return seen


def test_rmsprop_torch_steps_as_torch_optim_rmsprop_does():
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.optimizers import TorchRMSprop, l2_weight_decay, make_optimizer

    cfg = resolve_config(overrides={"optimizer": "rmsprop-torch", "weight_decay": 0.1,
                                    "lr_schedule": "constant", "learning_rate": 0.01})
    optimizer = make_optimizer(cfg, steps_per_epoch=10)
    assert isinstance(optimizer, TorchRMSprop) and l2_weight_decay(cfg) == 0.0
    # (Keras keeps the learning rate in float32: 0.01 is 0.0099999998, so 1e-7, not 1e-10)
    np.testing.assert_allclose(_three_steps(optimizer), TORCH_RMSPROP_STEPS, rtol=0, atol=1e-7)
    # Keras' RMSprop with an L2(w/2) term (PyTorch's gradient w * theta) still steps
    # otherwise: rho 0.9 and epsilon inside the square root
    keras_rmsprop = keras.optimizers.RMSprop(0.01)
    c, t = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, -1.0])
    theta = keras.Variable(np.array([0.5, -1.0, 2.0]), dtype="float64")
    keras_rmsprop.apply([2 * c * (theta.numpy() - t) + 0.1 * theta.numpy()], [theta])
    assert np.abs(theta.numpy() - TORCH_RMSPROP_STEPS[0]).max() > 1e-3
    # it round-trips through a saved model's optimizer config
    again = TorchRMSprop.from_config(optimizer.get_config())
    assert (again.alpha, again.eps, again.coupled_weight_decay) == (0.99, 1e-8, 0.1)
