"""LSH, PCAH and ITQ behind the HashingModel API (``--method lsh|pcah|itq``).

The model is: raw pixels -> rescale -> flatten -> fixed linear projection (x W + c) ->
sign. With ``features_from: RUN`` (``--features-from RUN``) the flatten is replaced by
that trained run's backbone, weights copied and frozen, so the baseline hashes learned
features (e.g. ITQ on SSDH's lenet features) and its run file is self-contained. W and
c come from the numpy estimators of ``keras_hashing.models.baselines``, fitted in closed form
on the training split by ``after_fit``; there is no gradient training.
Being HashingModels, the baselines get the same run directory, ``encode``, index,
search, evaluation and TF Serving export as the deep methods.
"""

from __future__ import annotations

import keras

from keras_hashing.models import baselines
from keras_hashing.models.backbones import pretrained_weights
from keras_hashing.errors import ConfigError
from keras_hashing.models.layers import PACKAGE
from keras_hashing.models.methods.base import HashingModel


class LinearHashing(HashingModel):
    """Base of the closed-form linear baselines."""

    supervised = False
    gradient_training = False
    estimator = None
    default_params = {"seed": 0}

    def __init__(self, *args, backbone="flatten", **kwargs):
        super().__init__(*args, backbone=backbone, **kwargs)
        self.backbone.trainable = False  # pixels, or a trained run's frozen features

    @classmethod
    def backbone_for(cls, cfg, splits, source=None):
        """Raw pixels (``flatten``), or the backbone of ``source``, the model of the trained
        run ``features_from`` (checked to take these images and give a vector)."""
        if source is None and pretrained_weights(cfg.get("features_from")):
            return cfg["features_from"], {}  # a pretrained backbone: the training-free baseline
        if source is None:
            if cfg["backbone"] != "flatten":
                raise ConfigError(f"{cls.method_name} hashes raw pixels (backbone: flatten) "
                                  "or the features of a trained run (--features-from RUN); "
                                  f"backbone {cfg['backbone']!r} would be untrained")
            return "flatten", cfg["backbone_kwargs"]
        if source.spatial_features:
            raise ConfigError(f"{cfg['features_from']}: a {source.method_name} backbone "
                              "returns a feature map, not a feature vector; use another run")
        if tuple(source.image_shape) != tuple(splits.input_shape):
            raise ConfigError(f"{cfg['features_from']} was trained on {source.image_shape} "
                              f"images; this dataset has {tuple(splits.input_shape)}")
        return source.backbone_spec, source.backbone_kwargs

    def build_head(self):
        self.projection = keras.layers.Dense(self.bits, trainable=False, name="projection")

    def head(self, features, training=False):
        return {"code": self.projection(features)}

    def loss_terms(self, outputs, targets):
        raise TypeError(f"{self.method_name} is fitted in closed form, not by gradients")

    def after_fit(self, splits, seed=0):
        est = self.estimator(self.bits, **self.params).fit(self.features(splits.train.x))
        w, c = est.projection()
        self.projection.set_weights([w.astype("float32"), c.astype("float32")])
        out = {}
        if est.quantization_loss_:
            out["quantization_loss_first_last"] = [est.quantization_loss_[0],
                                                   est.quantization_loss_[-1]]
        return out


@keras.saving.register_keras_serializable(package=PACKAGE)
class LSHModel(LinearHashing):
    method_name = "lsh"
    estimator = baselines.LSH


@keras.saving.register_keras_serializable(package=PACKAGE)
class PCAHModel(LinearHashing):
    method_name = "pcah"
    estimator = baselines.PCAH
    # rotate: a random orthogonal rotation after PCA (the Hashing-Baseline recipe)
    default_params = {"seed": 0, "rotate": False}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ITQModel(LinearHashing):
    method_name = "itq"
    estimator = baselines.ITQ
