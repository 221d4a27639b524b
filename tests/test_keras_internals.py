"""The Keras internals keras-hashing uses, each held to what its caller relies on, so a
Keras upgrade that moves one fails here first."""

import keras
import numpy as np
import tensorflow as tf

from keras_hashing import keras_internals


def _nested_model():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inner_dense"),
                              keras.layers.BatchNormalization(name="inner_bn")],
                             name="inner")
    inputs = keras.Input((4,))
    outputs = keras.layers.Dropout(0.5, seed=1, name="drop")(inner(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(outputs), name="outer")


def test_nested_layers_walks_into_nested_models_in_a_fixed_order():
    model = _nested_model()
    names = [layer.name for layer in keras_internals.nested_layers(model)]
    assert {"inner", "inner_dense", "inner_bn", "drop", "head"} <= set(names)
    assert "outer" not in names
    assert keras_internals.nested_layers(model, include_self=True)[0] is model
    # the same walk on a second copy: the order seed_generators' backup depends on
    again = [layer.name for layer in keras_internals.nested_layers(_nested_model())]
    assert [n for n in names if not n.startswith("input")] == [
        n for n in again if not n.startswith("input")]


def test_variable_key_and_index_find_each_variables_own_slot():
    model = _nested_model()
    optimizer = keras.optimizers.RMSprop()
    optimizer.build(model.trainable_variables)
    keys = [keras_internals.variable_key(optimizer, v) for v in model.trainable_variables]
    assert len(set(keys)) == len(keys)
    for i, v in enumerate(model.trainable_variables):
        index = keras_internals.variable_index(optimizer, v)
        assert index == i
        assert tuple(optimizer._velocities[index].shape) == tuple(v.shape)


def test_stateless_seeds_draw_from_the_key_alone_and_anew_at_each_draw():
    layer = keras.layers.RandomTranslation(0.3, 0.3)
    images = tf.random.stateless_uniform((4, 16, 16, 1), (1, 2)) * 255

    def draw(key):
        seeds = keras_internals.stateless_seeds(tf.constant(key, tf.int64))
        return layer.get_random_transformation(images, training=True, seed=seeds)[
            "translations"].numpy()

    a, b, c = draw([3, 4]), draw([3, 4]), draw([3, 5])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # height and width are two draws: not one number twice
    assert not np.array_equal(a[:, 0], a[:, 1])
