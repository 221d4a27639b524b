"""Re-estimate BatchNormalization statistics that a short fine-tune left stale.

A BatchNormalization layer normalises training batches with their own statistics but
inference batches with moving averages, which keep ``momentum ** steps`` of their
starting values after ``steps`` updates. keras.applications' networks use momentum 0.99
(ResNet) or 0.999 (MobileNetV3): after 75 steps a MobileNetV3 still infers with 93% of
its initial statistics (mean 0, variance 1, or ImageNet's), so training batches look fine
while every inference feature is off and the codes can collapse to one value. After such
a fit, the moving statistics are set to the average of the per-batch statistics over
training batches ("precise BN", Wu & Johnson 2021), computed with the trained weights.

Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, (256, 3)).astype("float32")
    >>> stale_batch_norms(model, steps=10) == model.layers
    True
    >>> recalibrate_batch_norm(model, [x[:128], x[128:]])
    2
    >>> bool(abs(float(model.layers[0].moving_mean[0]) - 5.0) < 0.5)
    True
"""

from __future__ import annotations

import keras

from keras_hashing.data.pipeline import make_tf_dataset
from keras_hashing.keras_internals import nested_layers

# A moving average that still holds more than this share of its starting value is stale.
STALE_SHARE = 0.05
# Batches averaged by a recalibration: precise BN's default count is 200; fewer suffice for
# the small collections this is for, and every batch is one forward pass.
MAX_BATCHES = 100


def trainable_batch_norms(model) -> list:
    """The trainable BatchNormalization layers of ``model``, nested ones included (a frozen
    layer keeps the statistics it was loaded with: it never trained on these images)."""
    return [layer for layer in nested_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def stale_batch_norms(model, steps: int) -> list:
    """The trainable BatchNormalization layers whose moving statistics still hold more than
    STALE_SHARE of their starting values after ``steps`` training steps."""
    return [layer for layer in trainable_batch_norms(model)
            if layer.momentum ** max(0, int(steps)) > STALE_SHARE]


def recalibrate_batch_norm(model, batches, max_batches=MAX_BATCHES, layers=None) -> int:
    """Set the moving statistics of ``layers`` (default: every trainable BatchNormalization
    of ``model``) to the mean of their batch statistics over up to ``max_batches`` image
    batches, by forward passes in training mode; returns the number of batches used.

    Batch i is folded in with momentum i / (i + 1), which makes the moving average the
    plain mean of the batches seen. Weights other than the statistics do not change.
    """
    layers = trainable_batch_norms(model) if layers is None else list(layers)
    if not layers:
        return 0
    momentums = [layer.momentum for layer in layers]
    used = 0
    try:
        for images in batches:
            if used >= max_batches:
                break
            for layer in layers:
                layer.momentum = used / (used + 1)
            # eager calls read the momentum set just above (a traced function would not)
            model(images, training=True)
            used += 1
    finally:
        for layer, momentum in zip(layers, momentums):
            layer.momentum = momentum
    return used


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """At each epoch end, before validation, re-estimate the BatchNormalization statistics
    that are stale (``stale_batch_norms``) or, with ``always``, all trainable ones.

    Args:
        batches: a callable returning an iterable of un-augmented training image batches.
        steps_per_epoch: training steps in one epoch (staleness is judged on steps trained).
        always: recalibrate every epoch, stale or not.
    """

    def __init__(self, batches, steps_per_epoch: int, always=False, max_batches=MAX_BATCHES):
        super().__init__()
        self.batches, self.steps_per_epoch = batches, steps_per_epoch
        self.always, self.max_batches = always, max_batches
        self.recalibrated_epochs: list = []

    def on_epoch_end(self, epoch, logs=None):
        steps = (epoch + 1) * self.steps_per_epoch
        layers = (trainable_batch_norms(self.model) if self.always
                  else stale_batch_norms(self.model, steps))
        if layers and recalibrate_batch_norm(self.model, self.batches(), self.max_batches,
                                             layers):
            self.recalibrated_epochs.append(epoch + 1)


def recalibration_callback(cfg, splits):
    """The epoch-end BatchNormalization recalibration of cfg's ``recalibrate_batchnorm``,
    on un-augmented training batches."""
    steps = cfg["steps_per_epoch"] or -(-len(splits.train) // cfg["batch_size"])

    def batches():  # shuffled: a folder's files come sorted by class
        return (images for images, _ in make_tf_dataset(
            splits.train, cfg["batch_size"], shuffle=True, seed=cfg["seed"], cache=False))

    return RecalibrateBatchNorm(batches, steps, always=cfg["recalibrate_batchnorm"] is True)
