"""Training throughput: each method's ``fit`` against a plain Keras classifier ``fit``.

Same backbone, batch, data and optimizer for every row; images/s is the batch size over
the median step time (time between step ends, input included) in --epochs timed epochs
after one warm-up epoch; the epoch-level rate is kept beside it. Each configuration runs in its own
process (logical CPU devices must be set before TensorFlow starts):

* every gradient-trained method and the plain classifier, no strategy, XLA off;
* the plain classifier and SSDH with XLA (``jit_compile=True``);
* the plain classifier and every method under MirroredStrategy over 2 logical CPUs
  (both share the same 2 cores, so this shows the cost of splitting them, not scaling);
* the same under MirroredStrategy over 1 device, and under MultiWorkerMirroredStrategy
  with one worker (``custom_loop``): the strategy's own per-step cost (distributed
  input, replica context, the global-batch gather, all-reduce) on unchanged compute.

Example:
    python tools/bench_train.py --out docs/bench_train.json          # about 10 minutes
    python tools/bench_train.py --methods ssdh dsh --train-size 4000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(args) -> None:
    """One process: measure every requested model under one (strategy, xla) setting."""
    import dataclasses

    import tensorflow as tf

    if args.logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    import keras

    from keras_hashing.models.backbones import build_backbone
    from keras_hashing.training.config import resolve_config
    from keras_hashing.data.pipeline import make_tf_dataset
    from keras_hashing.runs import load_splits
    from keras_hashing.training.fit import build_model

    if args.strategy == "multiworker":  # no TF_CONFIG: one local worker
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif args.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy(
            [f"/cpu:{i}" for i in range(args.logical_cpus)])
    else:
        strategy = tf.distribute.get_strategy()
    base = resolve_config(overrides={"dataset": args.dataset, "bits": 32,
                                     "batch_size": args.batch_size}, recipe=False,
                          sets=[f"backbone={args.backbone}"])
    splits = load_splits(base)
    train = splits.train
    if args.train_size and args.train_size < len(train):
        train = type(train)(train.x[:args.train_size], train.y[:args.train_size])

    class Timer(keras.callbacks.Callback):
        """Epoch times, and the time between consecutive step ends (data included)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start = self.last = time.perf_counter()
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self.epoch > 0 and batch > 0:  # not the warm-up epoch, not an epoch's first
                self.steps.append(now - self.last)
            self.last = now

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    for name in args.models:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            if name == "classifier":
                inputs = keras.Input(splits.input_shape)
                x = keras.layers.Rescaling(1 / 255.0)(inputs)
                x = build_backbone(args.backbone, splits.input_shape)(x)
                model = keras.Model(inputs, keras.layers.Dense(splits.num_classes)(x))
                model.compile(keras.optimizers.Adam(1e-3), jit_compile=args.xla,
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                needs_index = False
            else:
                cfg = dict(base, method=name, params={})
                if name in ("uh-bdnn", "sh-bdnn"):
                    cfg["params"] = {"num_train": len(train)}
                model = build_model(cfg, dataclasses.replace(splits, train=train))
                model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=args.xla)
                needs_index = model.needs_index
        ds = make_tf_dataset(train, args.batch_size, shuffle=True, with_index=needs_index)
        timer = Timer()
        timer.times, timer.steps = [], []
        if args.strategy == "multiworker":
            from keras_hashing.training.custom_loop import fit_in_custom_loop

            fit_in_custom_loop(model, ds, strategy, args.epochs + 1, callbacks=[timer],
                               verbose=0)
        else:
            model.fit(ds, epochs=args.epochs + 1, verbose=0, callbacks=[timer])
        per_epoch = timer.times[1:]  # the first epoch traces and fills the cache
        # The median step, not the epoch: on this shared box whole epochs sometimes stall
        # for about 5 s (epoch times of 3.8, 5.1, 10.3 and 20.5 s for the same work).
        rate = args.batch_size / statistics.median(timer.steps)
        print(json.dumps({"model": name, "strategy": args.strategy,
                          "replicas": int(strategy.num_replicas_in_sync),
                          "xla": args.xla, "images_per_s": round(rate, 1),
                          "epoch_images_per_s": round(len(train) / statistics.median(per_epoch), 1),
                          "epoch_s": [round(t, 2) for t in per_epoch]}), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*",
                   default=["ssdh", "dsh", "dpsh", "sdsh", "sh-bdnn", "uh-bdnn", "dmrh"])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--backbone", default="lenet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after a warm-up)")
    p.add_argument("--out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--logical-cpus", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="none", help=argparse.SUPPRESS)
    p.add_argument("--xla", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    common = ["--dataset", args.dataset, "--backbone", args.backbone, "--batch-size",
              str(args.batch_size), "--train-size", str(args.train_size), "--epochs",
              str(args.epochs)]
    everything = ["classifier", *args.methods]
    # (models, strategy, devices, xla)
    settings = [(everything, "none", 1, False),
                (["classifier", "ssdh"], "none", 1, True),
                (everything, "mirrored", 2, False),
                (everything, "mirrored", 1, False),
                ([m for m in everything if m != "classifier"], "multiworker", 1, False)]
    rows = []
    for models, strategy, cpus, xla in settings:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--models", *models,
               "--strategy", strategy, "--logical-cpus", str(cpus), *common] + (
                   ["--xla"] if xla else [])
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rows.append(json.loads(line))
                print(line, flush=True)
    reference = {(r["strategy"], r["replicas"], r["xla"]): r["images_per_s"] for r in rows
                 if r["model"] == "classifier"}
    single = {r["model"]: r["images_per_s"] for r in rows
              if r["strategy"] == "none" and not r["xla"]}
    for r in rows:
        ref = reference.get((r["strategy"], r["replicas"], r["xla"]))
        if ref:  # Keras' fit cannot run the classifier under multiworker
            r["vs_classifier"] = round(r["images_per_s"] / ref, 3)
        if r["strategy"] != "none":
            r["vs_no_strategy"] = round(r["images_per_s"] / single[r["model"]], 3)
    result = {"command": " ".join(["python"] + sys.argv), "rows": rows,
              "settings": {"dataset": args.dataset, "backbone": args.backbone,
                           "batch_size": args.batch_size, "train_size": args.train_size,
                           "timed_epochs": args.epochs}}
    if args.out:
        from keras_hashing.fileio import write_json

        write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
