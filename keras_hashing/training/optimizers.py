"""Optimizers of a run: Keras' own, one with PyTorch's RMSprop arithmetic, the learning-rate
schedule and the backbone's learning-rate multiplier.

``optimizer`` in a config names one of ``config.OPTIMIZERS``. ``rmsprop-torch`` exists because
the field's reference code (DeepHash-pytorch) trains with ``torch.optim.RMSprop``, whose
update Keras' RMSprop does not compute: Keras divides by ``sqrt(v + epsilon)`` with
``rho = 0.9``, PyTorch by ``sqrt(v) + eps`` with ``alpha = 0.99``, and PyTorch's
``weight_decay=w`` adds ``w * theta`` to the gradient of every parameter (coupled, before
the running average), where a Keras ``L2(w)`` regulariser adds ``2 * w * theta`` and only
on the kernels it is attached to.

Example:
    >>> cfg = {"optimizer": "rmsprop-torch", "learning_rate": 1e-5, "weight_decay": 1e-5,
    ...        "lr_schedule": "constant", "lr_warmup_epochs": 0, "epochs": 1,
    ...        "backbone_lr_multiplier": 1.0}
    >>> opt = make_optimizer(cfg, steps_per_epoch=10)
    >>> type(opt).__name__, opt.alpha, opt.coupled_weight_decay, l2_weight_decay(cfg)
    ('TorchRMSprop', 0.99, 1e-05, 0.0)
"""

from __future__ import annotations

import keras
from keras import ops

from keras_hashing.keras_internals import variable_index, variable_key
from keras_hashing.models.layers import PACKAGE
from keras_hashing.training.config import DECAYING_OPTIMIZERS


@keras.saving.register_keras_serializable(package=PACKAGE)
class TorchRMSprop(keras.optimizers.Optimizer):
    """RMSprop computed as ``torch.optim.RMSprop`` does (no momentum, not centred).

    Formula:
        g = gradient + coupled_weight_decay * theta      # every trained variable
        v = alpha * v + (1 - alpha) * g ** 2
        theta = theta - learning_rate * g / (sqrt(v) + eps)

    Args:
        learning_rate: a float or a Keras schedule.
        alpha: the running average's decay (PyTorch's default 0.99).
        eps: added to ``sqrt(v)`` (PyTorch's default 1e-8).
        coupled_weight_decay: PyTorch's ``weight_decay`` (named so beside Keras' own,
            decoupled ``weight_decay``, which this optimizer does not use).
    """

    def __init__(self, learning_rate=0.01, alpha=0.99, eps=1e-8, coupled_weight_decay=0.0,
                 name="torch_rmsprop", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.alpha = alpha
        self.eps = eps
        self.coupled_weight_decay = coupled_weight_decay

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._square_averages = self.add_optimizer_variables(variables, "square_average")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            gradient = gradient + self.coupled_weight_decay * variable
        square = self._square_averages[variable_index(self, variable)]
        self.assign(square, self.alpha * square + (1 - self.alpha) * ops.square(gradient))
        self.assign_sub(variable, lr * gradient / (ops.sqrt(square) + self.eps))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps,
                "coupled_weight_decay": self.coupled_weight_decay}


def l2_weight_decay(cfg: dict) -> float:
    """The L2 factor the model's kernels carry: ``weight_decay``, except under an optimizer
    that decays the weights itself (``DECAYING_OPTIMIZERS``), where the loss has no L2 term."""
    return 0.0 if cfg["optimizer"] in DECAYING_OPTIMIZERS else cfg["weight_decay"]


def make_optimizer(cfg: dict, steps_per_epoch: int, backbone_variables=()):
    """The configured optimizer; the backbone's variables learn at ``learning_rate x
    backbone_lr_multiplier`` (the usual lower rate for a pretrained network)."""
    lr = cfg["learning_rate"]
    warmup = cfg["lr_warmup_epochs"] * steps_per_epoch
    if cfg["lr_schedule"] == "cosine" or warmup:
        # Linear 0 -> lr over the warm-up, then cosine to 0 over the rest (alpha = 1 keeps
        # a constant schedule constant after its warm-up).
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else lr, max(1, cfg["epochs"] * steps_per_epoch - warmup),
            alpha=1.0 if cfg["lr_schedule"] == "constant" else 0.0,
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    if cfg["optimizer"] == "sgd":
        optimizer = keras.optimizers.SGD(lr, momentum=0.9)
    elif cfg["optimizer"] == "rmsprop":
        optimizer = keras.optimizers.RMSprop(lr)
    elif cfg["optimizer"] == "rmsprop-torch":
        optimizer = TorchRMSprop(lr, coupled_weight_decay=cfg["weight_decay"])
    elif cfg["optimizer"] == "adamw":
        # Keras scales the decay by the learning rate (w -= lr * wd * w), so useful values
        # are around 1e-2 to 1e-1, not the 5e-4 of an L2 term; biases and normalisation
        # scales are not decayed.
        optimizer = keras.optimizers.AdamW(lr, weight_decay=cfg["weight_decay"])
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    else:
        optimizer = keras.optimizers.Adam(lr)
    if cfg["backbone_lr_multiplier"] != 1.0 and backbone_variables:
        scale_learning_rate(optimizer, backbone_variables, cfg["backbone_lr_multiplier"])
    return optimizer


def scale_learning_rate(optimizer, variables, multiplier: float) -> None:
    """Make ``optimizer`` update ``variables`` with its learning rate times ``multiplier``.

    Keras optimizers have one learning rate; their per-variable ``update_step`` gets it
    as an argument, so this instance's update_step scales it for these variables. For
    SGD and Adam alike that is exactly a per-variable learning rate (scaling gradients
    would not be, for Adam). The optimizer's class and saved config stay Keras' own.
    """
    keys = {variable_key(optimizer, v) for v in variables}
    update_step = optimizer.update_step

    def scaled_update_step(gradient, variable, learning_rate):
        if variable_key(optimizer, variable) in keys:
            learning_rate = learning_rate * multiplier
        return update_step(gradient, variable, learning_rate)

    optimizer.update_step = scaled_update_step
