"""Feature extractors: a small CNN for 8x8 / 28x28 / 32x32 inputs, or any keras.applications.

A backbone maps float images in [0, 1] (the model rescales raw pixels before it) to a
flat feature vector. Build one with ``build_backbone(spec, input_shape)`` where spec is
``"small_cnn"``, ``"lenet"``, ``"flatten"`` or ``"applications:NAME"`` (e.g.
``"applications:ResNet50"``).

An application gets the input its family was trained on: pixels back in 0..255, then
the family's own ``preprocess_input`` (caffe-style BGR mean subtraction for ResNet50 and
VGG16, [-1, 1] for ResNet50V2 / MobileNetV2 / Inception, ImageNet mean and std for
DenseNet; EfficientNet(V2), MobileNetV3 and ConvNeXt normalise inside the model), and
grey images repeated to three channels. ``load_pretrained(backbone, spec, "imagenet")``
loads ImageNet weights exactly as ``keras.applications`` does (downloaded once into
``~/.keras/models``), or a local weights file.

Example:
    >>> net = build_backbone("small_cnn", (28, 28, 1))
    >>> tuple(net.output.shape)
    (None, 256)
"""

from __future__ import annotations

import importlib
import os
import re

import keras

from keras_hashing.errors import ConfigError, DataError
from keras_hashing.models.hub_backbones import (PRESET_WEIGHTS, build_hub_backbone,
                                                hub_preset, load_preset_weights)
from keras_hashing.models.layers import PACKAGE, batch_norm

SMALL_CNN = "small_cnn"
LENET = "lenet"
# An application's features: "pooled" (global average of its last feature map, Keras'
# pooling="avg") or "fc7" (VGG's second fully connected layer, 4,096-d, with the dropout
# of its ImageNet training: what the field's VGG baselines hash, e.g. DeepHash-pytorch's
# vgg16.classifier[:6]).
FEATURE_LAYERS = ("pooled", "fc7")
# the with-top ImageNet files of the VGGs (Keras' include_top=True download), for fc7
VGG_TOP_WEIGHTS = {
    "VGG16": ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
    "VGG19": ("vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318"),
}


def build_backbone(spec="small_cnn", input_shape=(28, 28, 1), weights=None, width=32,
                   convs_per_block=1, feature_dim=256, dropout=0.3, weight_decay=0.0,
                   feature_map=False, feature_layer="pooled", name="backbone"):
    """Return a functional ``keras.Model`` from images (H, W, C) in [0, 1] to features.

    With ``feature_map=True`` the model stops at its last convolutional feature map
    (h, w, c), for heads that look at regions (DMRH); ``flatten`` has none.
    ``feature_layer`` (applications: ``FEATURE_LAYERS``) picks which features.
    """
    if feature_layer not in FEATURE_LAYERS:
        raise ConfigError(f"feature_layer must be one of {', '.join(FEATURE_LAYERS)}, got "
                          f"{feature_layer!r}")
    if feature_layer != "pooled" and not (isinstance(spec, str)
                                          and spec.startswith("applications:")):
        raise ConfigError(f"feature_layer {feature_layer} is a layer of an "
                          f"applications:NAME backbone, not of {spec!r}")
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
                            feature_map, feature_layer)
    if hub_preset(spec) is not None:
        return build_hub_backbone(hub_preset(spec), tuple(input_shape), name, feature_map)
    raise ConfigError(f"unknown backbone {spec!r}; use 'small_cnn', 'lenet', 'flatten', "
                      "'applications:NAME' (a keras.applications model, e.g. "
                      "applications:ResNet50) or 'hub:PRESET' (a KerasHub preset)")


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


@keras.saving.register_keras_serializable(package=PACKAGE)
class ApplicationPreprocessing(keras.layers.Layer):
    """The ``preprocess_input`` of a keras.applications family, as a layer (0..255 in).

    Example:
        >>> import numpy as np
        >>> layer = ApplicationPreprocessing("ResNet50")
        >>> [round(float(v), 3) for v in layer(np.full((1, 1, 1, 3), 128.0, "float32"))[0, 0, 0]]
        [24.061, 11.221, 4.32]
    """

    def __init__(self, application, **kwargs):
        super().__init__(**kwargs)
        self.application = application
        self._preprocess = preprocess_function(application)

    def call(self, inputs):
        return self._preprocess(inputs)

    def get_config(self):
        return {**super().get_config(), "application": self.application}


def application_constructor(app_name):
    constructor = getattr(keras.applications, app_name, None)
    if constructor is None or not callable(constructor):
        raise ConfigError(f"keras.applications has no model {app_name!r} (e.g. ResNet50, "
                          "EfficientNetV2B0, MobileNetV3Small, ConvNeXtTiny, VGG16)")
    return constructor


def preprocess_function(app_name):
    """The family's ``preprocess_input`` (the module that defines the constructor has it)."""
    module = importlib.import_module(application_constructor(app_name).__module__)
    preprocess = getattr(module, "preprocess_input", None)
    if preprocess is None:
        raise ConfigError(f"keras.applications.{app_name} has no preprocess_input")
    return preprocess


def _application(app_name, input_shape, weights, name, feature_map=False,
                 feature_layer="pooled"):
    base = _application_base(app_name, input_shape, weights, feature_map, feature_layer)
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(255.0)(inputs)  # the model's [0, 1] back to pixels
    if input_shape[-1] == 1:  # ImageNet networks take colour images
        x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
    x = ApplicationPreprocessing(app_name, name="preprocess_input")(x)
    return keras.Model(inputs, base(x), name=name)


def _application_base(app_name, input_shape, weights, feature_map=False,
                      feature_layer="pooled"):
    """The keras.applications model without its top (or up to its fc7), with ``weights``
    loaded."""
    constructor = application_constructor(app_name)
    if weights in ("none", ""):
        weights = None
    if weights not in (None, "imagenet") and not os.path.isfile(str(weights)):
        raise ConfigError(f"backbone weights file {weights!r} does not exist; pass a local "
                          "weights file, weights: imagenet (downloaded by Keras) or null")
    shape = (*input_shape[:2], 3)
    if feature_layer == "fc7":
        return _vgg_fc7(app_name, constructor, shape, weights, feature_map)
    try:
        base = constructor(include_top=False, weights="imagenet" if weights == "imagenet"
                           else None, input_shape=shape,
                           pooling=None if feature_map else "avg")
    except Exception as e:  # Keras raises a bare Exception for a failed download
        message = " ".join(str(e).split())
        if "URL fetch failure" in message or "fetch failure" in message.lower():
            raise DataError(_download_help(app_name, message)) from None
        raise ConfigError(f"keras.applications.{app_name} cannot be built for {shape} "
                          f"images with weights={weights!r}: {message[:200]}") from None
    if weights not in (None, "imagenet"):
        try:
            base.load_weights(weights)
        except Exception as e:  # h5py and Keras raise many types for a bad file
            raise ConfigError(f"{weights}: cannot load it into {app_name} ({type(e).__name__}"
                              f": {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return base


def _vgg_fc7(app_name, constructor, shape, weights, feature_map):
    """VGG up to fc7 (Keras' layer "fc2") with the dropout it was trained with after fc6
    and fc7; ImageNet weights from the with-top file Keras downloads for include_top
    (its fully connected weights fit 224 x 224 images only)."""
    if app_name not in VGG_TOP_WEIGHTS or feature_map:
        raise ConfigError(f"feature_layer fc7 is VGG16's or VGG19's (and gives no feature "
                          f"map), not {app_name}'s")
    try:
        # weights=None builds the with-top layout for any image size
        base = constructor(include_top=True, weights=None, input_shape=shape)
        path = weights
        if weights == "imagenet":
            fname, file_hash = VGG_TOP_WEIGHTS[app_name]
            origin = importlib.import_module(constructor.__module__).WEIGHTS_PATH
            path = keras.utils.get_file(fname, origin, cache_subdir="models",
                                        file_hash=file_hash)
    except Exception as e:  # Keras raises a bare Exception for a failed download
        message = " ".join(str(e).split())
        if "fetch failure" in message.lower():
            raise DataError(_download_help(app_name, message)) from None
        raise ConfigError(f"keras.applications.{app_name} with its top cannot be built for "
                          f"{shape} images: {message[:200]}") from None
    if path:
        try:
            base.load_weights(path)
        except Exception as e:  # h5py and Keras raise many types for a bad file
            raise ConfigError(
                f"{path}: cannot load it into {app_name} up to fc7 for {shape[:2]} images "
                f"(ImageNet's fully connected weights fit 224 x 224 only; "
                f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
            ) from None
    x = base.get_layer("fc1")(base.get_layer("flatten").output)
    x = keras.layers.Dropout(0.5, name="fc6_dropout")(x)
    x = base.get_layer("fc2")(x)
    x = keras.layers.Dropout(0.5, name="fc7_dropout")(x)
    return keras.Model(base.input, x, name=f"{app_name.lower()}_fc7")


def _download_help(app_name, message) -> str:
    from keras.src.backend import config as keras_config

    url = re.search(r"https?://\S+?(?=[:\s]|$)", message)
    url = url.group(0) if url else "its origin"
    fname = url.rsplit("/", 1)[-1] if url != "its origin" else "the weights file"
    target = os.path.join(keras_config.keras_home(), "models", fname)
    return (f"cannot download the ImageNet weights of {app_name} from {url} "
            f"({message[-120:]}); download that file on a machine with internet and put "
            f"it at {target}, where Keras looks first, or pass --weights FILE")


def application_name(spec):
    """NAME of an ``applications:NAME`` spec, else None."""
    if isinstance(spec, str) and spec.startswith("applications:"):
        return spec.split(":", 1)[1]
    return None


def pretrained_weights(spec):
    """The trained weights a pretrained backbone spec names: "imagenet" for
    ``applications:NAME``, "preset" for ``hub:PRESET``; None for any other value (a run
    folder, or a backbone with no pretrained weights)."""
    if application_name(spec):
        return "imagenet"
    if hub_preset(spec) is not None:
        return PRESET_WEIGHTS
    return None


def load_pretrained(backbone, spec, weights, feature_layer="pooled") -> None:
    """Load ``weights`` ("imagenet" or a file) into the application inside ``backbone``
    (built with ``feature_layer``).

    The model a run saves then holds these weights itself, so loading a finished run
    never downloads anything.
    """
    if hub_preset(spec) is not None:
        if weights != PRESET_WEIGHTS:
            raise ConfigError(f"a hub: backbone takes weights: {PRESET_WEIGHTS} (the "
                              f"preset's own) or none, not {weights!r}")
        load_preset_weights(backbone, hub_preset(spec))
        return
    app_name = application_name(spec)
    if app_name is None:
        raise ConfigError(f"weights: {weights!r} needs an applications:NAME or hub:PRESET "
                          f"backbone, not {spec!r}")
    inner = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))
    shape = tuple(backbone.input_shape[1:])
    pretrained = _application_base(app_name, shape, weights,
                                   feature_map=len(inner.output_shape) == 4,
                                   feature_layer=feature_layer)
    inner.set_weights(pretrained.get_weights())
