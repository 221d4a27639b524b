"""Run configuration: defaults < recipe YAML < --config file < CLI flags < --set key=value.

A recipe is ``keras_hashing/recipes/<method>_<dataset>.yaml``; it is picked up automatically for
``keras-hashing fit --method M --dataset D`` when no ``--config`` is given. The resolved
configuration is written to every run directory as ``config.yaml``.

Example:
    >>> cfg = resolve_config(overrides={"bits": 32}, sets=["params.beta=0.5"], recipe=False)
    >>> cfg["bits"], cfg["params"]["beta"], cfg["dataset"]
    (32, 0.5, 'digits')
"""

from __future__ import annotations

import copy
import math
import os

import yaml

from keras_hashing.configfile import load_yaml, parse_yaml
from keras_hashing.errors import ConfigError


# seeds go to numpy's and TensorFlow's generators, which take 32-bit seeds
SEED_LIMIT = 2**32

DEFAULTS = {
    "method": "ssdh",
    "dataset": "digits",
    "protocol": None,
    # fmnist-unseen / fmnist-unseen-all: which pair of classes is held out (0-4; None: 0)
    "unseen_fold": None,
    # from-train: validation images held out of training pick the best epoch; none: the
    # whole training split trains and the last epoch is kept (the published tables' way);
    # auto: none for the field's standard protocols (cifar10*, nuswide, coco,
    # imagenet100), from-train for the rest
    "validation": "auto",
    "data_dir": None,
    "bits": 48,
    "epochs": 20,
    "batch_size": 64,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "lr_schedule": "cosine",
    # epochs over which the learning rate ramps linearly from 0 before the schedule
    "lr_warmup_epochs": 0,
    # the L2 factor on kernels; with optimizer adamw, the decoupled decay instead (no L2
    # term; Keras multiplies it by the learning rate, so 1e-2 to 1e-1 is its usual range)
    "weight_decay": 5e-4,
    "seed": 0,
    "backbone": "small_cnn",
    "backbone_kwargs": {},
    # applications backbones: "imagenet" (downloaded by Keras on first use), a local
    # weights file, or None (random initialisation)
    "weights": None,
    # transfer learning: epochs with the backbone frozen (BatchNormalization in inference
    # mode), then the backbone trains at learning_rate x backbone_lr_multiplier
    "backbone_warmup_epochs": 0,
    "backbone_lr_multiplier": 1.0,
    # the backbone frozen for the whole run (a feature extractor, in inference mode); with
    # feature_cache and no augmentation the training split is encoded once and the head
    # trains on the stored features (training.feature_cache), as it does in the frozen
    # epochs of backbone_warmup_epochs
    "freeze_backbone": False,
    "feature_cache": True,
    # re-estimate BatchNormalization statistics on training batches at each epoch end:
    # "auto" where a layer's moving averages still hold over 5% of their start (momentum
    # 0.999 layers before 3,000 steps; training.batchnorm), true every epoch, false never
    "recalibrate_batchnorm": "auto",
    "image_size": None,
    "channels": None,
    "on_bad_image": "fail",
    "download": True,
    "steps_per_epoch": None,
    "mixed_precision": False,
    "patience": None,
    "val_database_size": 10000,
    "tensorboard_samples": 1000,
    "strategy": "auto",
    "logical_cpus": None,
    "features_from": None,
    "augmentation": {},
    "params": {},
}
STRATEGIES = ("auto", "none", "mirrored", "multiworker")
# rmsprop-torch: torch.optim.RMSprop's arithmetic (training.optimizers.TorchRMSprop)
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "rmsprop-torch")
LR_SCHEDULES = ("constant", "cosine")
# optimizers that decay the weights themselves: the model's kernels carry no L2 term
DECAYING_OPTIMIZERS = ("adamw", "rmsprop-torch")


def _check_optimization(cfg: dict) -> None:
    """Optimizer, learning rate, its schedule and warm-up, weight decay."""
    for key in ("learning_rate", "weight_decay"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise ConfigError(f"{key} must be a non-negative number, got {cfg[key]!r}")
    if cfg["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"optimizer {cfg['optimizer']!r} unknown; choose from {OPTIMIZERS}")
    if cfg["lr_schedule"] not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule {cfg['lr_schedule']!r} unknown; choose from "
                          f"{LR_SCHEDULES}")
    _check_int(cfg, "lr_warmup_epochs", 0)
    if cfg["lr_warmup_epochs"] >= cfg["epochs"]:
        raise ConfigError(f"lr_warmup_epochs ({cfg['lr_warmup_epochs']}) must be fewer than "
                          f"epochs ({cfg['epochs']})")


RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "recipes")  # package data: a wheel carries it


def recipe_path(method: str, dataset: str):
    """The shipped recipe YAML for (method, dataset), or None.

    Example:
        >>> os.path.basename(recipe_path("ssdh", "digits"))
        'ssdh_digits.yaml'
    """
    path = os.path.join(RECIPES_DIR, f"{method.replace('-', '_')}_{dataset}.yaml")
    return path if os.path.isfile(path) else None


def parse_sets(items) -> dict:
    """``["a=1", "params.beta=0.5"]`` -> ``{"a": 1, "params": {"beta": 0.5}}`` (YAML values)."""
    out: dict = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = parse_yaml(raw) if raw else None
        except (yaml.YAMLError, ValueError):  # ValueError: an int past 4,300 digits
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; ``update`` wins. Nested dicts (params) merge key by key."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config(config_file=None, overrides=None, sets=None, recipe=True) -> dict:
    """Resolve the configuration of a run (see the module docstring for the order)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_file = load_yaml(config_file) if config_file else {}
    from_sets = parse_sets(sets)
    layered = merge(merge(from_file, overrides), from_sets)
    cfg = merge(DEFAULTS, {})
    if recipe and not config_file:
        method = layered.get("method", DEFAULTS["method"])
        dataset = layered.get("dataset", DEFAULTS["dataset"])
        path = recipe_path(str(method), str(dataset))
        if path:
            cfg = merge(cfg, load_yaml(path))
    return validate(merge(cfg, layered))


def validate(cfg: dict) -> dict:
    """Check keys and value types; raise ConfigError listing what is valid."""
    unknown = sorted(map(str, set(cfg) - set(DEFAULTS)))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(DEFAULTS)}")
    from keras_hashing.codes import check_bits
    from keras_hashing.models.methods import canonical_name

    for key, value in _numbers(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")

    if not isinstance(cfg["method"], str):
        raise ConfigError(f"method must be a name, got {cfg['method']!r}")
    for key in ("dataset", "backbone"):
        if not isinstance(cfg[key], str):
            raise ConfigError(f"{key} must be a name, got {cfg[key]!r}")
    for key in ("protocol", "data_dir", "features_from", "weights"):
        if cfg[key] is not None and not isinstance(cfg[key], str):
            raise ConfigError(f"{key} must be a string, got {cfg[key]!r}")
    cfg["method"] = canonical_name(cfg["method"])
    try:
        cfg["bits"] = check_bits(cfg["bits"])
    except Exception as e:
        raise ConfigError(str(e)) from None
    for key, low in (("epochs", 1), ("batch_size", 2), ("val_database_size", 1),
                     ("tensorboard_samples", 1)):
        _check_int(cfg, key, low)
    _check_int(cfg, "seed", 0, SEED_LIMIT)
    if cfg["patience"] is not None:
        _check_int(cfg, "patience", 1)
    if cfg["logical_cpus"] is not None:
        _check_int(cfg, "logical_cpus", 1)
    if cfg["steps_per_epoch"] is not None:
        _check_int(cfg, "steps_per_epoch", 1)
    _check_int(cfg, "backbone_warmup_epochs", 0)
    for key in ("download", "mixed_precision", "freeze_backbone", "feature_cache"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
    if cfg["freeze_backbone"] and cfg["backbone_warmup_epochs"]:
        raise ConfigError("freeze_backbone keeps the backbone frozen for the whole run; "
                          "backbone_warmup_epochs freezes it for the first epochs only: "
                          "give one or the other")
    if cfg["recalibrate_batchnorm"] not in (True, False, "auto"):
        raise ConfigError(f"recalibrate_batchnorm must be auto, true or false, got "
                          f"{cfg['recalibrate_batchnorm']!r}")
    from keras_hashing.data.images import BAD_IMAGE_POLICIES

    if cfg["on_bad_image"] not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got "
                          f"{cfg['on_bad_image']!r}")
    multiplier = cfg["backbone_lr_multiplier"]
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or \
            not 0 < multiplier <= 10:
        raise ConfigError(f"backbone_lr_multiplier must be a number in (0, 10], got "
                          f"{multiplier!r}")
    if cfg["strategy"] not in STRATEGIES:
        raise ConfigError(f"strategy {cfg['strategy']!r} unknown; choose from {STRATEGIES}")
    _check_optimization(cfg)
    _check_unseen_fold(cfg)
    _resolve_validation(cfg)
    for key in ("params", "backbone_kwargs", "augmentation"):
        if not isinstance(cfg[key], dict):
            raise ConfigError(f"{key} must be a mapping, got {cfg[key]!r}")
    _check_method_settings(cfg)
    from keras_hashing.data.pipeline import check_augmentation
    from keras_hashing.errors import DataError

    try:
        check_augmentation(cfg["augmentation"])
    except DataError as e:
        raise ConfigError(str(e)) from None
    _check_image_settings(cfg)
    return cfg


def _resolve_validation(cfg: dict) -> None:
    """validation ``auto`` becomes its protocol's setting (so config.yaml records what
    ran), and patience is refused where no images are held out to stop on."""
    from keras_hashing.data.benchmarks import default_validation
    from keras_hashing.data.datasets import default_protocol
    from keras_hashing.data.splits import VALIDATION_SETTINGS
    from keras_hashing.errors import DataError

    if cfg["validation"] not in ("auto", *VALIDATION_SETTINGS):
        raise ConfigError(f"validation must be auto, {' or '.join(VALIDATION_SETTINGS)}, got "
                          f"{cfg['validation']!r}")
    if cfg["validation"] == "auto":
        try:
            protocol = cfg["protocol"] or default_protocol(cfg["dataset"])
        except DataError as e:
            raise ConfigError(str(e)) from None
        cfg["validation"] = default_validation(protocol)
    if cfg["validation"] == "none" and cfg["patience"] is not None:
        raise ConfigError("patience stops on validation mAP, which needs images held out of "
                          "training; validation is none (the standard protocols' default): "
                          "set validation: from-train, or leave patience out")


def _check_unseen_fold(cfg: dict) -> None:
    """An unseen_fold only where the protocol has folds, and one of its folds."""
    if cfg["unseen_fold"] is None:
        return
    from keras_hashing.data.datasets import check_unseen_fold, default_protocol
    from keras_hashing.errors import DataError

    try:
        check_unseen_fold(cfg["unseen_fold"], cfg["protocol"] or default_protocol(cfg["dataset"]))
    except DataError as e:
        raise ConfigError(str(e)) from None


def _numbers(node, prefix=""):
    """(dotted key, value) of every float in a nested config."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, f"{prefix}{key}.")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{prefix}{i}.")
    elif isinstance(node, float):
        yield prefix.rstrip("."), node


def _check_int(cfg, key, low, limit=None):
    """cfg[key] an int >= low (and below ``limit``, the bound of the type that finally
    takes it)."""
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (
            limit is not None and v >= limit):
        bound = f" and below {limit:,}" if limit is not None else ""
        raise ConfigError(f"{key} must be an integer >= {low}{bound}, got {_short(v)}")


def _short(value) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else (
        f"an integer of {len(str(abs(value)))} digits")
    return text if len(text) <= 80 else text[:77] + "..."


def _check_method_settings(cfg: dict) -> None:
    """The method's own checks of bits and params (``HashingModel.check_settings``), so a
    config is refused here, as ``fit`` would refuse it, not after minutes of loading."""
    from keras_hashing.errors import CodeLengthError
    from keras_hashing.models.methods import get_method

    try:
        get_method(cfg["method"]).check_settings(cfg["bits"], cfg["params"])
    except CodeLengthError as e:
        raise ConfigError(str(e)) from None


def _check_image_settings(cfg: dict) -> None:
    """image_size ([height, width] or one int) and channels (1 or 3) resize and convert
    image files (and tfds:) as they are decoded; digits and fashion_mnist are arrays of
    one shape, so there they are refused rather than recorded and ignored."""
    if cfg["channels"] is not None and cfg["channels"] not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {cfg['channels']!r}")
    if cfg["image_size"] is not None:
        size = cfg["image_size"]
        if isinstance(size, int):
            size = [size, size]
        if not (isinstance(size, list) and len(size) == 2 and all(
                isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 4096
                for s in size)):
            raise ConfigError(f"image_size must be an int or [height, width], got {size!r}")
        cfg["image_size"] = size
    if cfg["dataset"] in ("digits", "fashion_mnist"):
        for key in ("image_size", "channels"):
            if cfg[key] is not None:
                raise ConfigError(f"{key} applies to image files and tfds: datasets; "
                                  f"{cfg['dataset']}'s images have one size and channel "
                                  f"count: leave {key} out")
