"""Foundation-model backbones from KerasHub: ``hub:PRESET``, a preset name
(``dinov2_small``, ``siglip2_base_patch16_224``, ...: downloaded by KerasHub through
kagglehub, as ``Backbone.from_preset`` does on a user's machine) or a local preset
directory (``save_to_preset``).

The backbone takes the model's [0, 1] images like every backbone here and gives one
feature vector: pixels back to 0..255, grey repeated to three channels, then the preset's
own image converter (its image size, and its scale and offset: rescaling or ImageNet
mean and std), then the vision tower. The feature is the one each family's model card
retrieves with: DINOv2 / DINOv3's CLS token of the last layer (after its final layer
norm); CLIP, SigLIP (2) and MetaCLIP 2's image embedding (KerasHub's
``get_vision_embeddings``: pooled, and projected into the joint space by CLIP and
MetaCLIP 2).

keras-hub is an optional extra (``pip install "keras-hashing[hub]"``). The weights follow
``--weights`` as for ``applications:``: none (random initialisation of the preset's
architecture) or ``preset`` (the preset's trained weights, loaded after construction,
so a saved run loads without the preset).

Example:
    >>> net = build_hub_backbone("/tmp/dino_tiny", (32, 32, 3))   # doctest: +SKIP
    >>> tuple(net.output.shape)                                    # doctest: +SKIP
    (None, 16)
"""

from __future__ import annotations

import keras

from keras_hashing.errors import ConfigError, DataError
from keras_hashing.models.layers import PACKAGE

HUB_PREFIX = "hub:"
EXTRA = 'pip install "keras-hashing[hub]"'
# ``weights`` values of a hub backbone: the preset's trained weights
PRESET_WEIGHTS = "preset"
# image backbones whose output is a token sequence: the CLS token is the feature
TOKEN_BACKBONES = ("DINOV2Backbone", "DINOV3Backbone")
# image-text backbones: the image embedding of get_vision_embeddings is the feature
# (SigLIP 2 presets load as SigLIPBackbone)
EMBEDDING_BACKBONES = ("CLIPBackbone", "SigLIPBackbone", "MetaCLIP2Backbone")


def hub_preset(spec):
    """PRESET of a ``hub:PRESET`` spec, else None."""
    if isinstance(spec, str) and spec.startswith(HUB_PREFIX):
        return spec[len(HUB_PREFIX):]
    return None


def import_keras_hub():
    """keras_hub, or one line naming the extra that installs it. Importing it also
    registers its layers, which loading a saved run of a hub backbone needs."""
    try:
        import keras_hub
    except ImportError:
        raise ConfigError(f"hub: backbones need KerasHub: {EXTRA}") from None
    return keras_hub


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassToken(keras.layers.Layer):
    """The first token (CLS) of a (batch, tokens, dim) sequence."""

    def call(self, tokens):
        return tokens[:, 0, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


def build_hub_backbone(preset, input_shape, name="backbone", feature_map=False,
                       load_weights=False):
    """A functional ``keras.Model`` from [0, 1] images of ``input_shape`` to the preset's
    feature vector (see the module docstring)."""
    if feature_map:
        raise ConfigError("this method needs a convolutional feature map; a hub: backbone "
                          "gives one feature vector")
    backbone, converter = _from_preset(preset, load_weights)
    tower = vision_tower(backbone, converter)
    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Rescaling(255.0)(inputs)  # the model's [0, 1] back to pixels
    if input_shape[-1] == 1:
        x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
    return keras.Model(inputs, tower(converter(x)), name=name)


def vision_tower(backbone, converter) -> keras.Model:
    """The preset's images (the converter's size) to its retrieval feature, as one model
    named ``vision_tower``: DINOv2 / DINOv3's CLS token; the image embedding of CLIP,
    SigLIP and MetaCLIP 2 (``get_vision_embeddings``: pooled, and projected where the
    family projects)."""
    size = tuple(int(v) for v in (converter.image_size or backbone.image_shape[:2]))
    images = keras.Input((*size, 3))
    kind = type(backbone).__name__
    if kind in TOKEN_BACKBONES:
        # fed by its input's own name (DINOv2 "images", DINOv3 "pixel_values")
        (name,) = backbone.input.keys()
        features = ClassToken(name="cls_token")(backbone({name: images}))
    elif kind in EMBEDDING_BACKBONES:
        features = backbone.get_vision_embeddings(images)
    else:
        raise ConfigError(f"hub: {kind} is not an image backbone keras-hashing knows "
                          "(DINOv2 or DINOv3, or the image tower of CLIP, SigLIP or "
                          "MetaCLIP 2)")
    return keras.Model(images, features, name="vision_tower")


def load_preset_weights(backbone, preset) -> None:
    """Copy the preset's trained weights into the vision tower inside ``backbone`` (a
    model of ``build_hub_backbone``)."""
    trained, converter = _from_preset(preset, load_weights=True)
    backbone.get_layer("vision_tower").set_weights(
        vision_tower(trained, converter).get_weights())


def _from_preset(preset, load_weights):
    keras_hub = import_keras_hub()
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights)
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as e:  # kagglehub and KerasHub raise many types
        message = " ".join(str(e).split())[:240]
        if any(word in message.lower() for word in ("connect", "resolve", "network",
                                                    "timed out", "http", "download")):
            raise DataError(f"hub:{preset}: KerasHub could not download the preset "
                            f"({message}); on a machine without internet, save it with "
                            "save_to_preset and pass its folder as hub:DIR") from None
        raise ConfigError(f"hub:{preset}: not a KerasHub image preset or preset folder "
                          f"({type(e).__name__}: {message})") from None
    if converter is None:
        raise ConfigError(f"hub:{preset} has no image converter; is it an image model?")
    return backbone, converter
