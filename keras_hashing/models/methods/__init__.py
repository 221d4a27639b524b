"""Hashing methods by name. Listing names imports no TensorFlow; getting a class does.

Example:
    >>> "ssdh" in method_names()
    True
"""

from __future__ import annotations

import importlib

from keras_hashing.errors import ConfigError

# name -> (module, class). Aliases point at the same entry.
_REGISTRY = {
    "ssdh": ("keras_hashing.models.methods.ssdh", "SSDH"),
    "dsh": ("keras_hashing.models.methods.dsh", "DSH"),
    "dpsh": ("keras_hashing.models.methods.dpsh", "DPSH"),
    "sdsh": ("keras_hashing.models.methods.sdsh", "SDSH"),
    "sh-bdnn": ("keras_hashing.models.methods.bdnn", "SHBDNN"),
    "uh-bdnn": ("keras_hashing.models.methods.bdnn", "UHBDNN"),
    "dmrh": ("keras_hashing.models.methods.dmrh", "DMRH"),
    "classifier-code": ("keras_hashing.models.methods.classifier_code", "ClassifierCode"),
    "csq": ("keras_hashing.models.methods.csq", "CSQ"),
    "orthohash": ("keras_hashing.models.methods.orthohash", "OrthoHash"),
    "hashnet": ("keras_hashing.models.methods.hashnet", "HashNet"),
    "greedyhash": ("keras_hashing.models.methods.greedyhash", "GreedyHash"),
    "lsh": ("keras_hashing.models.methods.linear", "LSHModel"),
    "pcah": ("keras_hashing.models.methods.linear", "PCAHModel"),
    "itq": ("keras_hashing.models.methods.linear", "ITQModel"),
}
_ALIASES: dict = {"dshse": "sdsh", "sh_bdnn": "sh-bdnn", "shbdnn": "sh-bdnn",
                  "uh_bdnn": "uh-bdnn", "uhbdnn": "uh-bdnn",
                  "classifier_code": "classifier-code", "orthocos": "orthohash"}


def method_names() -> list:
    return sorted(_REGISTRY)


def registered_classes() -> dict:
    """{class name: (module, class name)} of every registered method, without importing
    them (the lazy ``keras_hashing.SSDH`` etc. use it)."""
    return {cls: (module, cls) for module, cls in _REGISTRY.values()}


def canonical_name(name: str) -> str:
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(method_names())}")
    return key


def get_method(name: str):
    """The HashingModel subclass (or baseline class) registered under ``name``."""
    module, cls = _REGISTRY[canonical_name(name)]
    return getattr(importlib.import_module(module), cls)
