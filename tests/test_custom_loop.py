"""The multi-worker training loop (keras_hashing.training.custom_loop) drives callbacks as fit does.

The real two-process run is tests/test_distribute.py::test_two_workers_on_loopback_train_
the_single_device_model; here the loop runs under the default strategy, in-process.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_hashing.training import custom_loop
from keras_hashing.training.config import resolve_config
from keras_hashing.data.pipeline import make_tf_dataset
from keras_hashing.training.fit import build_model


class Recorder(keras.callbacks.Callback):
    def __init__(self, stop_after_epoch=None):
        super().__init__()
        self.events, self.stop_after_epoch = [], stop_after_epoch

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        assert np.isfinite(logs["loss"])
        self.events.append("batch")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch}")
        if epoch == self.stop_after_epoch:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def _model_and_data(digits):
    cfg = resolve_config(overrides={"method": "dsh", "bits": 12})
    model = build_model(cfg, digits)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    data = make_tf_dataset(digits.train.subset(np.arange(256)), 64, shuffle=False)
    return model, data


def test_callbacks_run_in_fit_order_from_the_initial_epoch(digits):
    model, data = _model_and_data(digits)
    recorder = Recorder()
    history = custom_loop.fit_in_custom_loop(model, data, tf.distribute.get_strategy(),
                                             epochs=3, initial_epoch=1,
                                             callbacks=[recorder], verbose=0)
    assert recorder.events == (["train_begin"]
                               + ["epoch_begin 1"] + ["batch"] * 4 + ["epoch_end 1"]
                               + ["epoch_begin 2"] + ["batch"] * 4 + ["epoch_end 2"]
                               + ["train_end"])
    assert len(history.history["loss"]) == 2


def test_stop_training_ends_the_loop_after_that_epoch(digits):
    model, data = _model_and_data(digits)
    before = [w.copy() for w in model.get_weights()]
    recorder = Recorder(stop_after_epoch=0)
    custom_loop.fit_in_custom_loop(model, data, tf.distribute.get_strategy(), epochs=5,
                                   callbacks=[recorder], verbose=0)
    assert recorder.events.count("batch") == 4 and recorder.events[-1] == "train_end"
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_the_default_strategy_is_chief_and_not_multi_worker():
    strategy = tf.distribute.get_strategy()
    assert custom_loop.is_chief(strategy) and not custom_loop.multi_worker(strategy)
    assert custom_loop.agree(strategy, 7) == (7, 7)
