"""Memory and throughput of collections on disk: streamed fit, index build, input pipeline.

Writes synthetic JPEG collections (128 x 128, 10 colour-texture classes) of each size,
then measures, each in a fresh process:

* peak RSS (VmHWM) of ``keras-hashing fit --epochs 1`` with a step limit, and of
  ``keras-hashing index build --images folder:...`` over the whole collection;
* images/s of the tf.data pipeline alone, of the model's train step alone (on one
  cached batch), and of the whole fit, for the lenet and small_cnn backbones;
* images/s of ``index build`` against a plain ``model.predict`` over the same tf.data
  pipeline (ratio of medians, side by side in one process).

Usage:
    python tools/bench_data.py --sizes 5000 20000 80000 --out docs/bench_data.json

Not run by the tests (minutes of work and several GB of JPEGs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def write_collection(root, n, size=128, classes=10, seed=0):
    """n JPEGs under root/<class>/ (skipped if already there)."""
    from PIL import Image

    marker = os.path.join(root, f".complete-{n}")
    if os.path.exists(marker):
        return root
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c in range(classes):
        os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
    for i in range(n):
        c = i % classes
        pattern = np.sin((xx * (c + 1) + yy * (classes - c)) * 6.0 + rng.uniform(0, 6))
        img = np.stack([pattern * 80 + 40 * k + rng.normal(0, 12, (size, size))
                        for k in range(3)], axis=-1) + 100
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            os.path.join(root, f"c{c}", f"{i:07d}.jpg"), quality=90)
    open(marker, "w").close()
    return root


def peak_rss_mib(argv, env=None):
    """Run argv and return (peak RSS in MiB, seconds, stdout); children included."""
    # A fresh shim process runs the command, so its RUSAGE_CHILDREN peak (KiB on Linux)
    # is this command's alone (in this process the maximum would carry over).
    shim = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", shim, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    out, err = proc.communicate()
    seconds = time.time() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err[-2000:]}")
    return round(int(err.strip().splitlines()[-1]) / 1024, 1), round(seconds, 1), out


def measure_memory(root, n, work):
    kh = [sys.executable, "-m", "keras_hashing"]
    run = os.path.join(work, f"run_{n}")
    if not os.path.exists(os.path.join(run, "model.keras")):
        fit_rss, fit_s, _ = peak_rss_mib(
            [*kh, "fit", "--dataset", f"folder:{root}", "--bits", "32", "--epochs", "1",
             "--image-size", "128", "--out", run, "--quiet", "--set", "backbone=lenet",
             "--set", "steps_per_epoch=40", "--set", "val_database_size=500",
             "--set", "tensorboard_samples=100"])
    else:
        fit_rss, fit_s = None, None
    index = os.path.join(work, f"index_{n}.khi")
    if os.path.exists(index):
        os.unlink(index)
    build_rss, build_s, out = peak_rss_mib(
        [*kh, "index", "build", "--run", run, "--images", f"folder:{root}", "--out", index,
         "--quiet"])
    return {"images": n, "fit_peak_rss_mib": fit_rss, "fit_seconds": fit_s,
            "index_build_peak_rss_mib": build_rss, "index_build_seconds": round(build_s, 1),
            "index_build_images_per_s": round(n / build_s, 1)}


def measure_throughput(root, work, rounds=3, steps=30):
    """Pipeline alone vs model step alone vs fit, per backbone; index build vs predict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from keras_hashing.data import datasets as data
    from keras_hashing.data import pipeline
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import build_model
    from keras_hashing.training.optimizers import make_optimizer

    splits = data.load_dataset(f"folder:{root}", image_size=(128, 128))
    rows = []
    for backbone in ("lenet", "small_cnn"):
        cfg = resolve_config(overrides={"dataset": f"folder:{root}", "bits": 32,
                                        "backbone": backbone})
        model = build_model(cfg, splits)
        model.compile(optimizer=make_optimizer(cfg, steps))
        batch = cfg["batch_size"]
        pipeline = pipeline.make_tf_dataset(splits.train, batch, shuffle=True).repeat()
        one = next(iter(pipeline))
        cached = tf.data.Dataset.from_tensors(one).repeat()
        result = {"backbone": backbone, "batch_size": batch}
        for name, fn in (
                ("pipeline_images_per_s", lambda: _drain(pipeline, steps, batch)),
                ("model_step_images_per_s", lambda: _fit(model, cached, steps, batch)),
                ("fit_images_per_s", lambda: _fit(model, pipeline, steps, batch))):
            fn()  # warm-up (tracing)
            result[name] = round(float(np.median([fn() for _ in range(rounds)])), 1)
        rows.append(result)
    return rows, compare_index_build(work, root, rounds)


def compare_index_build(work, root, rounds=5):
    """index build (the streaming path, its own batch size) vs model.predict over the same
    pipeline, alternated round by round; the ratio is the median of the rounds'."""
    from keras_hashing import indexing
    from keras_hashing.data import datasets as data
    from keras_hashing.data import pipeline
    from keras_hashing.models.prediction import inference_batch_size
    from keras_hashing.runs import load_run

    model = load_run(os.path.join(work, f"run_{min_size(work)}")).model
    split = data.load_images_split(f"folder:{root}", model.image_shape)
    sub = split.subset(np.arange(min(len(split), 4000)))
    batch = inference_batch_size(model.image_shape)  # what index build uses
    predict_ds = pipeline.inference_dataset(sub, batch).map(lambda x, ok: x)
    ours, reference = [], []
    for _ in range(rounds):
        t = time.time()
        model.predict(predict_ds, verbose=0)
        reference.append(len(sub) / (time.time() - t))
        t = time.time()
        out = os.path.join(work, "tmp_bench.khi")
        indexing.build_index(sub, out, model.bits, indexing.model_batches(model, sub, batch),
                             {"bench": time.time()}, {})
        ours.append(len(sub) / (time.time() - t))
        os.unlink(out)
    return {"images": len(sub), "batch_size": batch, "rounds": rounds,
            "index_build_images_per_s": round(float(np.median(ours)), 1),
            "predict_images_per_s": round(float(np.median(reference)), 1),
            "ratio": round(float(np.median(np.array(ours) / np.array(reference))), 3)}


def min_size(work):
    sizes = [int(n.split("_")[1]) for n in os.listdir(work) if n.startswith("run_")]
    return min(sizes)


def _drain(ds, steps, batch):
    t = time.time()
    for _ in ds.take(steps):
        pass
    return steps * batch / (time.time() - t)


def _fit(model, ds, steps, batch):
    t = time.time()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * batch / (time.time() - t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 80000])
    p.add_argument("--work", default="/tmp/kh-bench-data")
    p.add_argument("--out", default="docs/bench_data.json")
    args = p.parse_args(argv)
    from machine_info import machine

    os.makedirs(args.work, exist_ok=True)
    memory = []
    for n in sorted(args.sizes):
        root = write_collection(os.path.join(args.work, f"jpeg_{n}"), n)
        memory.append(measure_memory(root, n, args.work))
        print(json.dumps(memory[-1]), flush=True)
    throughput, compare = measure_throughput(
        os.path.join(args.work, f"jpeg_{min(args.sizes)}"), args.work)
    result = {"machine": machine(), "image_size": 128, "memory": memory,
              "throughput": throughput, "index_build_vs_predict": compare,
              "command": "python tools/bench_data.py " + " ".join(argv or sys.argv[1:])}
    from keras_hashing.fileio import write_json

    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
