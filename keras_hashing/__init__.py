"""keras-hashing: deep supervised hashing for image retrieval with Keras 3.

The public API is loaded lazily: ``import keras_hashing`` pulls in no TensorFlow, and
each name below imports its module on first use. The numpy-only parts (``search``,
``evaluation``, ``codes``, ``serving.client``) stay usable by a search client that never
pays TensorFlow's import time.

Example:
    >>> import keras_hashing as kh
    >>> cfg = kh.resolve_config(overrides={"method": "ssdh", "bits": 32})
    >>> cfg["bits"], kh.HammingIndex(bits=32).bits
    (32, 32)
    >>> run = kh.fit(cfg, out="runs/d32")                          # doctest: +SKIP
    >>> kh.evaluate("runs/d32")["map_all"]                          # doctest: +SKIP
"""

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "HammingIndex": ("keras_hashing.search.index", "HammingIndex"),
    "fit": ("keras_hashing.training.fit", "fit"),
    "evaluate": ("keras_hashing.scoring", "evaluate"),
    "evaluate_model": ("keras_hashing.scoring", "evaluate_model"),
    "load_run": ("keras_hashing.runs", "load_run"),
    "resolve_config": ("keras_hashing.training.config", "resolve_config"),
    "load_dataset": ("keras_hashing.data.datasets", "load_dataset"),
    "export_run": ("keras_hashing.serving.export", "export_run"),
    "TFServingClient": ("keras_hashing.serving.client", "TFServingClient"),
    "HashingModel": ("keras_hashing.models.methods.base", "HashingModel"),
    "HashingError": ("keras_hashing.errors", "HashingError"),
    "pack_bits": ("keras_hashing.codes", "pack_bits"),
    "unpack_bits": ("keras_hashing.codes", "unpack_bits"),
}


def _method_classes() -> dict:
    """Every registered method class by its class name (kh.SSDH, kh.ITQModel, ...)."""
    from keras_hashing.models.methods import registered_classes

    return registered_classes()


def __getattr__(name):
    import importlib

    if name in _API:
        module, attr = _API[name]
    elif name in _method_classes():
        module, attr = _method_classes()[name]
    else:
        raise AttributeError(f"module 'keras_hashing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted([*globals(), *_API, *_method_classes()])


__all__ = sorted([*_API, *_method_classes()])
