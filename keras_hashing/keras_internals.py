"""Every use of a Keras internal in one place, so a Keras upgrade that moves one breaks
here, in ``tests/test_keras_internals.py``, and not silently in a callback.

Written against Keras 3.15 (``KERAS_WRITTEN_FOR``). Each function names the private
attribute it reaches for; the public API has no equivalent for any of them. TensorFlow
and Keras are imported inside the functions: this module sits on the floor of the layers.

Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.layers[0] in nested_layers(model)
    True
"""

from __future__ import annotations

import functools

KERAS_WRITTEN_FOR = "3.15"


def nested_layers(model, include_self=False) -> list:
    """Every layer inside ``model``, nested models' layers included, in Keras' own order
    (``Layer._flatten_layers``)."""
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def variable_key(optimizer, variable):
    """The key a Keras optimizer indexes a variable by (``Optimizer._var_key``)."""
    return optimizer._var_key(variable)


def variable_index(optimizer, variable) -> int:
    """The position of ``variable`` in the optimizer's slot lists, as Keras' own
    optimizers find a variable's slots (``Optimizer._get_variable_index``)."""
    return optimizer._get_variable_index(variable)


def stateless_seeds(key):
    """A ``keras.random.SeedGenerator`` whose draws are a function of ``key`` (an int64
    tensor of shape (2,)) and of how many draws came before, with no state variable:
    Keras' random preprocessing layers take it as ``get_random_transformation(seed=...)``
    inside a tf.data function, where a seed must come from the data (the epoch and the
    batch) for a resumed run to draw what the uninterrupted one drew.

    Keras' ``draw_seed`` calls ``next()`` on any ``SeedGenerator``; the subclass skips
    the base initialiser, which would create a variable.
    """
    return _stateless_seed_class()(key)


@functools.lru_cache(maxsize=None)
def _stateless_seed_class():
    import keras
    import tensorflow as tf

    class StatelessSeeds(keras.random.SeedGenerator):
        def __init__(self, key):  # noqa: super().__init__ would create a state variable
            self._key = tf.cast(key, tf.int64)
            self._draws = 0

        def next(self, ordered=True):
            # each draw of a trace its own seed: a layer drawing twice (height and width
            # of a translation) must not get one number twice
            self._draws += 1
            return tf.random.experimental.stateless_fold_in(self._key, self._draws)

    return StatelessSeeds
