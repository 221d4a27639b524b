"""One SGD step on 2 logical CPUs vs one step on one device, for every trainable method.

Run by tests/test_distribute.py in its own process (logical devices must be configured
before TensorFlow starts). Prints one JSON line per method.
"""

import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from keras_hashing.training.config import resolve_config  # noqa: E402
from keras_hashing.data.pipeline import make_tf_dataset  # noqa: E402
from keras_hashing.models.methods.base import gather_global_batch  # noqa: E402
from keras_hashing.runs import load_splits  # noqa: E402
from keras_hashing.training.fit import build_model  # noqa: E402

STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # one per process


def one_step(cfg, splits, strategy, batch):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model(cfg, splits)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.before_fit(splits, seed=0)
    ds = make_tf_dataset(splits.train, batch, with_index=model.needs_index).take(1)
    model.fit(ds, epochs=1, verbose=0)
    return model, [np.asarray(w) for w in model.trainable_weights]


def global_loss(model, splits, batch):
    """The loss terms computed inside 2 replicas on gathered outputs, and on one device."""
    x, y = splits.train.x[:batch], splits.train.y[:batch]
    targets = ({"label": y, "index": np.arange(batch)} if model.needs_index else y)
    single = model.loss_terms(model(x), targets)

    def replica_fn(inputs):
        images, t = inputs
        out, tg = gather_global_batch(model(images), t)
        return model.loss_terms(out, tg)["loss"]

    ds = tf.data.Dataset.from_tensor_slices((x, targets)).batch(batch)
    dist = STRATEGY.experimental_distribute_dataset(ds)
    per_replica = STRATEGY.run(replica_fn, args=(next(iter(dist)),))
    values = [float(v) for v in STRATEGY.experimental_local_results(per_replica)]
    return float(single["loss"]), values


for name in sys.argv[1:]:
    # NAME or NAME+PARAM: a boolean parameter switched on (dpsh+memory_bank)
    method, _, switch = name.partition("+")
    sets = [] if method == "dmrh" else ["backbone=flatten"]
    sets += [f"params.{switch}=true"] if switch else []
    cfg = resolve_config(overrides={"method": method, "bits": 16}, sets=sets, recipe=False)
    splits = load_splits(cfg)
    single_model, single = one_step(cfg, splits, tf.distribute.get_strategy(), 32)
    model, mirrored = one_step(cfg, splits, STRATEGY, 32)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored))
    scale = max(float(np.max(np.abs(a))) for a in single)
    # per-example state (DPSH's memory bank) must end up the same as on one device
    state = {w.path: (np.asarray(w), np.asarray(v)) for w, v in zip(model.non_trainable_weights,
                                                           single_model.non_trainable_weights)
             if "bank" in w.path}
    state_diff = max([float(np.max(np.abs(a - b))) for a, b in state.values() if a.size]
                     or [0.0])
    one_device, replicas = global_loss(model, splits, 32)
    print(json.dumps({"method": name, "max_weight_diff": diff, "max_weight": scale,
                      "bank_diff": state_diff, "bank_rows_filled": int(sum(
                          np.count_nonzero(np.abs(a).sum(axis=1))
                          for path, (a, _) in state.items() if "u_bank" in path)),
                      "loss_one_device": one_device, "loss_per_replica": replicas}),
          flush=True)
