"""Feature extractors: a small CNN for 8x8 / 28x28 / 32x32 inputs, or any keras.applications.

A backbone maps float images in [0, 1] (the model rescales raw pixels before it) to a
flat feature vector. Build one with ``build_backbone(spec, input_shape)`` where spec is
``"small_cnn"`` or ``"applications:NAME"`` (e.g. ``"applications:ResNet50"``), optionally
with ``weights`` = None or a local weights file (nothing is downloaded).

Example:
    >>> net = build_backbone("small_cnn", (28, 28, 1))
    >>> tuple(net.output.shape)
    (None, 256)
"""

from __future__ import annotations

import os

import keras

from keras_hashing.errors import ConfigError

SMALL_CNN = "small_cnn"
LENET = "lenet"


def build_backbone(spec="small_cnn", input_shape=(28, 28, 1), weights=None, width=32,
                   convs_per_block=1, feature_dim=256, dropout=0.3, weight_decay=0.0,
                   feature_map=False, name="backbone"):
    """Return a functional ``keras.Model`` from images (H, W, C) in [0, 1] to features.

    With ``feature_map=True`` the model stops at its last convolutional feature map
    (h, w, c), for heads that look at regions (DMRH); ``flatten`` has none.
    """
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    if spec == SMALL_CNN:
        return _small_cnn(tuple(input_shape), width, convs_per_block, feature_dim, dropout,
                          reg, name, feature_map)
    if spec == "flatten":  # raw pixels as features (the classic baselines)
        if feature_map:
            raise ConfigError("this method needs a convolutional backbone (small_cnn, lenet "
                              "or applications:NAME), not flatten")
        inputs = keras.Input(tuple(input_shape))
        return keras.Model(inputs, keras.layers.Flatten()(inputs), name=name)
    if spec == LENET:
        return _lenet(tuple(input_shape), width, feature_dim, dropout, reg, name, feature_map)
    if isinstance(spec, str) and spec.startswith("applications:"):
        return _application(spec.split(":", 1)[1], tuple(input_shape), weights, name,
                            feature_map)
    raise ConfigError(f"unknown backbone {spec!r}; use 'small_cnn', 'lenet', 'flatten' or "
                      "'applications:NAME' "
                      "(a keras.applications model, e.g. applications:ResNet50)")


def batch_norm():
    """BatchNormalization; synchronized across replicas when built under a strategy with
    more than one, so each step normalises with the global batch's statistics and every
    replica (and worker) keeps the same moving averages: the model one device would
    train. Measured: with per-replica statistics, two workers' moving means differed by
    0.2% after 2 digits epochs and DMRH's one-step weights by 8e-4 on 2 logical CPUs."""
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return keras.layers.BatchNormalization(momentum=0.9, synchronized=replicas > 1)


def _small_cnn(input_shape, width, convs_per_block, feature_dim, dropout, reg, name,
               feature_map=False):
    """Up to 3 blocks of Conv-BN-ReLU (width, 2x, 4x filters), 2x2 pooling between blocks.

    One conv per block by default: on 2 CPU cores two convs per block cost 4x the time
    (about 150 vs 600+ images/s at 28x28) for a small gain in accuracy.
    """
    h, w = input_shape[:2]
    inputs = keras.Input(input_shape)
    x = inputs
    filters = width
    size = min(h, w)
    blocks = 0
    while True:
        for _ in range(convs_per_block):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                    kernel_regularizer=reg)(x)
            x = batch_norm()(x)
            x = keras.layers.ReLU()(x)
        blocks += 1
        if size < 8 or blocks == 3:
            break
        x = keras.layers.MaxPooling2D(2)(x)
        size //= 2
        filters *= 2
    if feature_map:
        return keras.Model(inputs, x, name=name)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(feature_dim, activation="relu", kernel_regularizer=reg)(x)
    return keras.Model(inputs, x, name=name)


def _lenet(input_shape, width, feature_dim, dropout, reg, name, feature_map=False):
    """Two 5x5 valid Conv-BN-ReLU-MaxPool blocks (width, 2x width filters), then a dense layer.

    The shape of DSH's and DPSH's small nets; on 2 CPU cores it trains about twice as
    fast as ``small_cnn`` at 28x28 (about 1,200 vs 600 images/s), so the 28x28 / 32x32
    recipes use it. Needs inputs of at least 16x16.
    """
    if min(input_shape[:2]) < 16:
        raise ConfigError(f"the lenet backbone needs images of at least 16x16, got "
                          f"{input_shape[:2]}; use small_cnn")
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in (width, 2 * width):
        x = keras.layers.Conv2D(filters, 5, use_bias=False, kernel_regularizer=reg)(x)
        x = batch_norm()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    if feature_map:
        return keras.Model(inputs, x, name=name)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(feature_dim, activation="relu", kernel_regularizer=reg)(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, x, name=name)


def _application(app_name, input_shape, weights, name, feature_map=False):
    constructor = getattr(keras.applications, app_name, None)
    if constructor is None or not callable(constructor):
        raise ConfigError(f"keras.applications has no model {app_name!r}")
    if weights not in (None, "none") and not os.path.exists(str(weights)):
        raise ConfigError(f"backbone weights file {weights!r} does not exist; pass a local "
                          "file (downloads are not possible) or weights: null")
    base = constructor(include_top=False, weights=None, input_shape=input_shape,
                       pooling=None if feature_map else "avg")
    if weights not in (None, "none"):
        base.load_weights(weights)
    inputs = keras.Input(input_shape)
    # keras.applications expect 0..255 pixels (each applies its own preprocessing).
    x = keras.layers.Rescaling(255.0)(inputs)
    return keras.Model(inputs, base(x), name=name)
