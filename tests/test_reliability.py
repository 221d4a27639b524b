"""Faults and bad input: nothing lost, nothing crashes (see docs/RELIABILITY.md)."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from keras_hashing.cli import main as cli

from keras_hashing.training import config
from keras_hashing.data import datasets as data
from keras_hashing import configfile, fileio
from keras_hashing.codes import pack_bits
from keras_hashing.errors import HashingError
from keras_hashing.search.index import HammingIndex

# -- fit survives kill -9 -------------------------------------------------------------------


def test_fit_killed_mid_run_resumes_at_last_finished_epoch(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "keras_hashing", "fit", "--method", "ssdh", "--epochs",
           "5", "--bits", "16", "--out", str(out), "--quiet", "--set", "val_database_size=300"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = out / "backup" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "fit finished before it could be killed"
    time.sleep(0.2)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(state.read_text())
    saved_epoch = saved["epoch"]
    assert not (out / "model.keras").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == saved_epoch >= 2
    # the training time counts the epochs before the kill too
    assert saved["train_seconds"] > 0
    assert metrics["train_seconds"] == pytest.approx(
        saved["train_seconds"] + metrics["train_seconds_this_process"], abs=0.02)
    assert metrics["epochs_run"] == 5 and len(metrics["validation"]["map_all_per_epoch"]) == 5
    assert not (out / "backup").exists()
    # a finished run is never overwritten by a rerun
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr


KILL_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "fit_killed_at.py")
KILL_FIT_ARGS = ["--epochs", "2", "--bits", "16", "--set", "val_database_size=300",
                 "--set", "tensorboard_samples=50"]
# CI kills in the three phases where a resume has work to do: after an epoch's backup,
# during the final evaluation, while the model is saved (a kill before the first epoch
# leaves an empty run, one after the finished marker a whole one); --runslow kills at all
KILL_SAMPLE = ("replace backup/state.json", "evaluate", "replace model.keras")


def _kill_fit(n, out):
    proc = subprocess.run([sys.executable, KILL_SCRIPT, str(n), str(out), *KILL_FIT_ARGS],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return proc


@pytest.fixture(scope="module")
def fit_writes(tmp_path_factory):
    """The numbered writes of one uninterrupted fit (inside its run directory)."""
    proc = _kill_fit(0, tmp_path_factory.mktemp("count") / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = json.loads(proc.stdout.strip().splitlines()[-1])
    return [(i + 1, e) for i, e in enumerate(events) if ".." not in e]


def _kill_points(writes, everywhere):
    if everywhere:
        return writes
    first = {}
    for n, event in writes:
        first.setdefault(event, n)
    return [(first[e], e) for e in KILL_SAMPLE]


@pytest.mark.parametrize("everywhere", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["sample", "every-write"])
def test_fit_killed_at_every_write_resumes_or_is_finished(everywhere, fit_writes, tmp_path,
                                                          capsys):
    from keras_hashing import runs

    points = _kill_points(fit_writes, everywhere)
    assert len(points) >= 3
    for n, event in points:
        out = tmp_path / f"kill{n}"
        killed = _kill_fit(n, out)
        assert killed.returncode == 137, (event, killed.stderr[-2000:])
        kind = runs.status(out)
        assert kind in ("empty", "training", "finished"), (event, kind, os.listdir(out))
        if kind == "finished":  # killed after the marker: the run is whole already
            run = runs.load_run(str(out))
            assert run.metrics["epochs_run"] == 2, event
            continue
        if kind == "training":
            with pytest.raises(HashingError, match="not finished"):
                runs.load_run(str(out))
        code = cli.main(["fit", "--out", str(out), "--quiet", *KILL_FIT_ARGS])
        assert code == 0, (event, capsys.readouterr().err)
        run = runs.load_run(str(out))
        assert run.metrics["epochs_run"] == 2, event
        assert sorted(os.listdir(out)) == ["config.yaml", "logs", "metrics.json",
                                           "model.keras", "run.json"], event


# -- a resumed fit is the run ------------------------------------------------------------

RESUME_ARGS = ["--epochs", "3", "--bits", "16", "--set", "val_database_size=300",
               "--set", "tensorboard_samples=50"]


def _scalars(run):
    """{(log folder, tag, step): value} of every TensorBoard scalar a run wrote (a resumed
    run's come from two processes' event files)."""
    import tensorflow as tf

    found = {}
    for path in sorted((run / "logs").rglob("events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = (value.simple_value if value.HasField("simple_value")
                          else float(tf.make_ndarray(value.tensor)) if value.tensor.dtype
                          in (tf.float32.as_datatype_enum, tf.float64.as_datatype_enum)
                          and not value.tensor.tensor_shape.dim else None)
                if number is not None:
                    found[(path.parent.name, value.tag, event.step)] = number
    return found


def _comparable_metrics(run):
    timing = {"train_seconds", "train_seconds_this_process", "resumed_from_epoch"}
    return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items()
            if k not in timing}


def _fit_uninterrupted(out, args):
    """One fit never interrupted, and the numbered writes such a fit makes."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    listed = subprocess.run([sys.executable, KILL_SCRIPT, "0", str(out), *args],
                            capture_output=True, text=True, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    return out, json.loads(listed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _fit_uninterrupted(tmp_path_factory.mktemp("uninterrupted") / "run", RESUME_ARGS)


@pytest.mark.parametrize("kill", ["after epoch 1", "after epoch 2", "during epoch 2"])
def test_a_resumed_fit_ends_as_the_uninterrupted_run(kill, uninterrupted, tmp_path):
    """Killed (-9) at an epoch boundary or mid-epoch, then resumed: the same weights, the
    same metrics.json (but its timings) and the same TensorBoard scalars as a run that was
    never interrupted, on this CPU. The data order of each epoch is drawn from the seed
    and the epoch, and the backup keeps where dropout's random numbers stand, so a resume
    takes both up where the killed run stopped."""
    _kill_resume_and_compare(kill, *uninterrupted, tmp_path / "resumed", RESUME_ARGS)


def test_a_resumed_augmented_fit_ends_as_the_uninterrupted_run(tmp_path):
    """The same with random augmentation on: each batch's draws are seeded by the seed,
    the epoch and the step, so the resumed epochs augment as the uninterrupted ones."""
    args = [*RESUME_ARGS, "--set", "augmentation.translation=0.1",
            "--set", "augmentation.flip=horizontal"]
    whole, writes = _fit_uninterrupted(tmp_path / "whole", args)
    _kill_resume_and_compare("after epoch 1", whole, writes, tmp_path / "resumed", args)


def test_a_fit_resumed_within_its_cached_warm_up_ends_as_the_uninterrupted_run(tmp_path):
    """Killed in the warm-up epochs that train on stored features: the resumed run reads
    the stored features, joins the backbone on images after the warm-up, and ends as the
    run never killed."""
    args = [*RESUME_ARGS, "--set", "backbone_warmup_epochs=2", "--learning-rate", "0.005"]
    whole, writes = _fit_uninterrupted(tmp_path / "whole", args)
    assert any("features" in write for write in writes)  # it trained on a cache
    _kill_resume_and_compare("after epoch 1", whole, writes, tmp_path / "resumed", args)


def _kill_resume_and_compare(kill, whole, writes, out, args):
    from keras_hashing import runs

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # every training in a process of its own, as a user runs them
    fit = [sys.executable, "-m", "keras_hashing", "fit", "--quiet", *args, "--out"]
    if kill.startswith("after"):  # the n-th backup state written, then dead at once
        # the write after the n-th state: that state is on disk, nothing after it
        states = [i + 2 for i, e in enumerate(writes) if e == "replace backup/state.json"]
        killed = subprocess.run([sys.executable, KILL_SCRIPT,
                                 str(states[int(kill[-1]) - 1]), str(out), *args],
                                capture_output=True, text=True, env=env, timeout=300)
        assert killed.returncode == 137
    else:
        proc = subprocess.Popen(fit + [str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = out / "backup" / "state.json"
        deadline = time.time() + 240
        while not (state.exists() and json.loads(state.read_text())["epoch"] >= 1):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # into epoch 2
        proc.kill()
        proc.wait()
    assert runs.status(out) == "training"
    assert subprocess.run(fit + [str(out)], env=env, timeout=300).returncode == 0
    a, b = runs.load_run(str(whole)), runs.load_run(str(out))
    assert b.metrics["resumed_from_epoch"] == (1 if kill != "after epoch 2" else 2)
    for x, y in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert _comparable_metrics(whole) == _comparable_metrics(out)
    scalars = _scalars(whole)
    assert scalars and _scalars(out) == scalars


# -- every writer is atomic: kill it at random points -------------------------------------

WRITER = r"""
import itertools, sys, numpy as np
from keras_hashing import configfile, fileio
from keras_hashing.search.index import HammingIndex
d = sys.argv[1]
for i in itertools.count():
    v = i % 2
    idx = HammingIndex(64)
    idx.add(np.full((2000 + 1000 * v, 8), v, np.uint8), labels=np.full(2000 + 1000 * v, v))
    idx.save(d + "/index.khi")
    fileio.write_json(d + "/metrics.json", {"v": v, "pad": "x" * (200000 + v)})
    fileio.write_text(d + "/config.yaml", configfile.dump({"v": v, "pad": "y" * 100000}))
"""


def _check_versions(d):
    idx = HammingIndex.load(os.path.join(d, "index.khi"))
    assert len(idx) in (2000, 3000)
    assert set(np.unique(idx.codes)) == {len(idx) // 1000 - 2}
    assert fileio.read_json(os.path.join(d, "metrics.json"))["v"] in (0, 1)
    assert configfile.load_yaml(os.path.join(d, "config.yaml"))["v"] in (0, 1)


def test_writers_killed_at_random_points_leave_old_or_new_files(tmp_path, request):
    # 40 random kills in CI (each a fresh process, about 0.4 s); 500 with --runslow
    KILLS = 500 if request.config.getoption("--runslow") else 40
    rng = random.Random(0)
    d = str(tmp_path)
    idx = HammingIndex(64)
    idx.add(np.zeros((2000, 8), np.uint8), labels=np.zeros(2000))
    idx.save(d + "/index.khi")
    fileio.write_json(d + "/metrics.json", {"v": 0})
    fileio.write_text(d + "/config.yaml", "v: 0\n")
    kills = 0
    while kills < KILLS:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, d])
        time.sleep(rng.uniform(0.15, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        _check_versions(d)
    leftovers = [f for f in os.listdir(d) if ".tmp" in f]
    # a kill can orphan a temp file; it never replaces a real one
    assert all(f.startswith(".") for f in leftovers)


# -- fuzzing: the only exception allowed out of a reader is HashingError -------------------

def _valid_index_bytes(tmp_path):
    idx = HammingIndex(24)
    idx.add(pack_bits(np.random.default_rng(0).integers(0, 2, (6, 24))), labels=np.arange(6))
    idx.save(tmp_path / "v.khi")
    return (tmp_path / "v.khi").read_bytes()


def _mutations(valid):
    flips = st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)),
                     max_size=4)
    return st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        flips.map(lambda fl: _flip(valid, fl)),
        st.tuples(st.integers(8, 42), st.binary(min_size=1, max_size=8)).map(
            lambda t: valid[:t[0]] + t[1] + valid[t[0] + len(t[1]):]),
    )


def _flip(data, flips):
    b = bytearray(data)
    for pos, x in flips:
        b[pos] ^= x
    return bytes(b)


def _fuzz_readers(tmp_path, examples):
    valid = _valid_index_bytes(tmp_path)
    path = tmp_path / "f.bin"

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(blob=_mutations(valid), text=st.text(max_size=120))
    def run(blob, text):
        path.write_bytes(blob)
        for reader in (HammingIndex.load, configfile.load_yaml, fileio.read_json,
                       lambda p: data.read_idx(str(p))):
            try:
                reader(path)
            except HashingError:
                pass
        path.write_text(text)
        for reader in (configfile.load_yaml, fileio.read_json, _resolve):
            try:
                reader(path)
            except HashingError:
                pass

    run()


def _resolve(path):
    return config.resolve_config(str(path))


def test_fuzz_readers_short(tmp_path):
    _fuzz_readers(tmp_path, 300)


@pytest.mark.slow
def test_fuzz_readers_10000(tmp_path):
    _fuzz_readers(tmp_path, 10_000)


@settings(max_examples=300, deadline=None, database=None)
@given(cfg=st.dictionaries(
    st.sampled_from(sorted(config.DEFAULTS)) | st.text(max_size=5),
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=8) | st.lists(st.integers(-5, 50), max_size=3)
    | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2), max_size=6))
def test_fuzz_config_values(cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        config.resolve_config(str(path))
    except HashingError:
        pass


# -- bad input at the CLI: one line, exit status 2 -----------------------------------------

def _png_folder(root, counts):
    from PIL import Image

    for cls, n in counts.items():
        os.makedirs(root / cls, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((10, 10, 3), i, np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def bad_inputs(trained_run, tmp_path_factory):
    """Files for the bad-input table, built once."""
    d = tmp_path_factory.mktemp("bad")
    (d / "bad.yaml").write_text("bits: [1, 2\n")
    (d / "list.yaml").write_text("- 1\n")
    # billion laughs: 9 levels of 10 aliases, 10^9 leaves in under 1 kB
    levels = ["l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (d / "bomb.yaml").write_text("\n".join(levels) + "\n")
    (d / "cycle.yaml").write_text("params: &p {inner: *p}\n")
    good = HammingIndex(24)
    good.add(pack_bits(np.zeros((4, 24))), labels=np.arange(4))
    good.save(d / "good.khi")
    raw = (d / "good.khi").read_bytes()
    (d / "garbage.khi").write_bytes(os.urandom(100))
    (d / "zero_bytes.npy").write_bytes(b"")
    from test_images import _bomb

    (d / "bomb.webp").write_bytes(_bomb("VP8X"))
    (d / "truncated.khi").write_bytes(raw[:-7])
    (d / "v9.khi").write_bytes(raw[:8] + (9).to_bytes(2, "little") + raw[10:])
    wide = HammingIndex(64)
    wide.add(pack_bits(np.zeros((2, 64))))
    wide.save(d / "wide.khi")
    np.save(d / "big.npy", np.zeros((2, 28, 28, 1), np.uint8))
    np.save(d / "nan.npy", np.full((2, 8, 8, 1), np.nan, np.float32))
    np.save(d / "ok.npy", np.zeros((2, 8, 8, 1), np.uint8))
    np.save(d / "strings.npy", np.array(["a", "b"]))
    (d / "notes.txt").write_text("not an image")
    (d / "broken.npy").write_bytes(b"garbage")
    _png_folder(d / "onecls", {"a": 4})
    _png_folder(d / "single", {"a": 5, "b": 1})
    _png_folder(d / "txtfolder", {"a": 5, "b": 5})
    (d / "txtfolder" / "a" / "readme.md").write_text("x")
    _png_folder(d / "corruptimg", {"a": 12, "b": 12})  # enough for every split: the bad
    # file is met when training streams it
    (d / "corruptimg" / "b" / "x.png").write_bytes(b"\x89PNG garbage")
    (d / "emptyfolder" / "a").mkdir(parents=True)
    (d / "emptyfolder" / "b").mkdir()
    norun = d / "norun"
    norun.mkdir()
    (norun / "config.yaml").write_text("method: ssdh\n")
    badmodel = d / "badmodel"
    badmodel.mkdir()
    (badmodel / "model.keras").write_bytes(b"PK garbage")
    (badmodel / "config.yaml").write_text("method: ssdh\n")
    badcfg = d / "badcfg"
    badcfg.mkdir()
    (badcfg / "model.keras").write_bytes(b"x")
    (badcfg / "config.yaml").write_text("method: [unclosed\n")
    np.save(d / "empty.npy", np.zeros((0, 8, 8, 1), np.uint8))
    np.save(d / "zerod.npy", np.array(3.0))
    os.mkfifo(d / "fifo")
    # named pipes where files are read: opening one for reading would block forever
    for name in ("fifo.yaml", "fifo.txt", "fifo.csv", "fifo.png", "fifo.npy"):
        os.mkfifo(d / name)
    _png_folder(d / "fifofolder", {"a": 5, "b": 5})
    os.mkfifo(d / "fifofolder" / "b" / "pipe.png")
    (d / "listfifo.txt").write_text(f"{d / 'fifofolder' / 'a' / '0.png'} 0\n{d / 'fifo.png'} 1\n")
    (d / "fmfifo").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        os.mkfifo(d / "fmfifo" / name)
    HammingIndex(24).save(d / "empty.khi")
    for name, digest in (("other1", "0" * 64), ("other2", "1" * 64)):
        other = HammingIndex(24)
        other.add(pack_bits(np.zeros((2, 24))))
        other.metadata = {"model_sha256": digest, "method": "ssdh", "run": "/elsewhere"}
        other.save(d / f"{name}.khi")
    (d / "x.khi.partial").mkdir()
    (d / "x.khi.partial" / "state.json").write_text("[]")
    fm = d / "fm"
    fm.mkdir()
    for prefix, n in (("train", 20), ("t10k", 10)):
        imgs = np.zeros((n, 28, 28), np.uint8)
        (fm / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in imgs.shape)
            + imgs.tobytes())
        labels = np.full(n, 12, np.uint8)
        (fm / f"{prefix}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels.tobytes())
    return d, trained_run.path


BAD_INPUT_CASES = [
    # (id, argv with {d} = files folder and {run} = a trained 24-bit digits run, message)
    ("unknown method", "fit --method nope", "unknown method 'nope'"),
    ("unknown dataset", "fit --dataset cifar", "unknown dataset 'cifar'"),
    ("unknown config key", "fit --set colour=red", "unknown config key"),
    ("bad --set syntax", "fit --set bits", "key=value"),
    ("bits not an integer", "fit --set bits=abc", "code length must be an integer"),
    ("bits out of range", "fit --bits 0", "out of range"),
    ("bits too large", "fit --bits 100000", "out of range"),
    ("epochs zero", "fit --epochs 0", "epochs must be an integer >= 1"),
    ("unknown optimizer", "fit --set optimizer=adagrad", "optimizer 'adagrad' unknown"),
    ("unknown method parameter", "fit --set params.delta=1 --epochs 1",
     "unknown ssdh parameter"),
    ("unknown protocol", "fit --protocol fmnist", "does not apply to digits"),
    ("bad image size", "fit --set image_size=[0,3]", "image_size must be"),
    ("bad channels", "fit --set channels=2", "channels must be 1 or 3"),
    ("bad YAML", "fit --config {d}/bad.yaml", "not valid YAML"),
    ("YAML not a mapping", "fit --config {d}/list.yaml", "must be a YAML mapping"),
    ("YAML alias bomb", "config show --config {d}/bomb.yaml", "expands to more than 100,000"),
    ("YAML alias cycle", "config show --config {d}/cycle.yaml", "expands to more than"),
    ("missing config file", "fit --config {d}/none.yaml", "none.yaml: file not found"),
    ("missing data dir", "fit --dataset fashion_mnist --data-dir {d}/none",
     "dataset-fashion-mnist"),
    ("labels out of range", "fit --dataset fashion_mnist --data-dir {d}/fm",
     "labels go up to 12"),
    ("missing image folder", "fit --dataset folder:{d}/none", "does not exist"),
    ("folder with one class", "fit --dataset folder:{d}/onecls", "at least 2"),
    ("class with one example", "fit --dataset folder:{d}/single", "class 'b'"),
    ("non-image file in folder", "fit --dataset folder:{d}/txtfolder", "readme.md"),
    ("unreadable image in folder", "fit --dataset folder:{d}/corruptimg --quiet", "x.png"),
    ("empty dataset", "fit --dataset folder:{d}/emptyfolder", "holds no images"),
    ("run dir missing", "evaluate --run {d}/none", "does not exist"),
    ("--split beside --images", "index build --run {run} --images folder:{d}/txtfolder "
     "--split query --out {d}/split.khi", "--images encodes the whole collection"),
    ("--dataset beside --images", "encode --run {run} --images folder:{d}/txtfolder "
     "--dataset digits --out {d}/split.npz", "--images encodes the whole collection"),
    ("WebP decompression bomb", "search --index {d}/good.khi --run {run} --images "
     "{d}/bomb.webp", "bomb.webp: cannot read image"),
    ("0-byte .npy query", "search --index {d}/good.khi --run {run} --images "
     "{d}/zero_bytes.npy", "zero_bytes.npy: not a .npy array of images"),
    ("run dir without model.keras", "evaluate --run {d}/norun", "has no model.keras"),
    ("corrupt model.keras", "evaluate --run {d}/badmodel", "cannot load the model"),
    ("bad config.yaml in run", "evaluate --run {d}/badcfg", "not valid YAML"),
    ("garbage index file", "search --index {d}/garbage.khi --run {run} --images {d}/ok.npy",
     "garbage.khi"),
    ("truncated index file", "search --index {d}/truncated.khi --run {run} --images x.png",
     "truncated"),
    ("wrong-version index", "search --index {d}/v9.khi --run {run} --images x.png",
     "version 9 is not supported"),
    ("missing index file", "search --index {d}/none.khi --run {run} --images x.png",
     "cannot read index file"),
    ("model and index bit lengths differ",
     "search --index {d}/wide.khi --run {run} --images {d}/ok.npy", "64-bit codes"),
    ("wrong image shape", "search --index {d}/good.khi --run {run} --images {d}/big.npy",
     "model expects (8, 8, 1)"),
    ("NaN pixels", "search --index {d}/good.khi --run {run} --images {d}/nan.npy", "NaN"),
    ("non-numeric images", "search --index {d}/good.khi --run {run} --images {d}/strings.npy",
     "numeric pixels"),
    ("non-image query file", "search --index {d}/good.khi --run {run} --images {d}/notes.txt",
     "not an image file"),
    ("unreadable .npy", "search --index {d}/good.khi --run {run} --images {d}/broken.npy",
     "not a .npy"),
    ("k below 1", "search --index {d}/good.khi --run {run} --images {d}/ok.npy -k 0",
     "-k must be >= 1"),
    ("serving URL without model", "search --index {d}/good.khi --serving-url "
     "http://127.0.0.1:9 --images {d}/ok.npy", "needs --model"),
    ("bad serving URL", "search --index {d}/good.khi --serving-url localhost --model m "
     "--images {d}/ok.npy", "must look like http://"),
    ("export over an existing version", "export --run {run} --base {d}/sm --name m "
     "--version 1", "already exists"),
    ("export with a bad name", "export --run {run} --base {d}/sm --name ../x",
     "plain folder name"),
    # outputs: never a folder, never an input, never a file of another kind
    ("fit --out a file", "fit --out {d}/notes.txt", "is a file"),
    ("fit --out a folder that is not a run", "fit --out {d}/fm", "not a run"),
    ("encode over the run's model", "encode --run {run} --out {run}/model.keras",
     "also an input"),
    ("encode --out a folder", "encode --run {run} --out {d}", "is a folder"),
    ("index build over the run's model", "index build --run {run} --out {run}/model.keras",
     "not a file this command writes"),
    ("index build --out a folder", "index build --run {run} --out {d}", "is a folder"),
    ("index build over a malformed partial build", "index build --run {run} --out "
     "{d}/x.khi", "not a build state"),
    ("index merge over its own shard", "index merge --out {d}/good.khi {d}/good.khi",
     "also an input"),
    ("index merge of two models' shards", "index merge --out {d}/m.khi {d}/other1.khi "
     "{d}/other2.khi", "different models"),
    ("plot --out a file", "plot --run {run} --out {d}/notes.txt", "not a folder"),
    ("export --base a file", "export --run {run} --base {d}/notes.txt",
     "cannot create the folder"),
    ("search --show a folder", "search --index {d}/good.khi --run {run} --images "
     "{d}/ok.npy --show {d}", "is a folder"),
    # empty things
    ("search an empty index", "search --index {d}/empty.khi --run {run} --images "
     "{d}/ok.npy", "is empty"),
    ("an empty image array", "search --index {d}/good.khi --run {run} --images "
     "{d}/empty.npy", "holds no images"),
    ("a 0-d image array", "search --index {d}/good.khi --run {run} --images {d}/zerod.npy",
     "holds no images"),
    # an index of another model, a FIFO, a folder
    ("index built by another run", "search --index {d}/other1.khi --run {run} --images "
     "{d}/ok.npy", "built by another model"),
    ("index info on a FIFO", "index info {d}/fifo", "not a regular file"),
    ("config is a FIFO", "fit --config {d}/fifo.yaml", "not a regular file (a named pipe)"),
    ("list file is a FIFO", "fit --dataset list:{d}/fifo.txt", "not a regular file"),
    ("CSV file is a FIFO", "fit --dataset csv:{d}/fifo.csv", "not a regular file"),
    ("FIFO named .png in a folder", "fit --dataset folder:{d}/fifofolder",
     "pipe.png: not an image file"),
    ("FIFO listed as an image", "encode --run {run} --images list:{d}/listfifo.txt "
     "--out {d}/never.npz --quiet", "fifo.png: cannot read image"),
    ("query image is a FIFO", "search --index {d}/good.khi --run {run} --images {d}/fifo.png",
     "fifo.png: cannot read image"),
    (".npy query is a FIFO", "search --index {d}/good.khi --run {run} --images {d}/fifo.npy",
     "not a regular file"),
    ("Fashion-MNIST files are FIFOs", "fit --dataset fashion_mnist --data-dir {d}/fmfifo",
     "not a regular file"),
    ("index info on a folder", "index info {d}", "not a regular file"),
    # numbers and environment
    ("learning rate NaN", "fit --learning-rate nan", "must be a finite number"),
    ("timeout NaN", "search --index {d}/good.khi --serving-url http://127.0.0.1:9 --model m "
     "--images {d}/ok.npy --timeout nan", "--timeout must be"),
    ("timeout zero", "search --index {d}/good.khi --serving-url http://127.0.0.1:9 --model m "
     "--images {d}/ok.npy --timeout 0", "--timeout must be"),
    ("timeout negative", "index build --serving-url http://127.0.0.1:9 --model m --images "
     "folder:{d}/onecls --out {d}/s.khi --timeout -1", "--timeout must be"),
    ("concurrency zero", "index build --serving-url http://127.0.0.1:9 --model m --images "
     "folder:{d}/onecls --out {d}/s.khi --concurrency 0", "--concurrency must be"),
    ("port out of range", "search --index {d}/good.khi --serving-url "
     "http://127.0.0.1:99999 --model m --images {d}/ok.npy", "Port out of range"),
    ("bad KH_SEARCH_THREADS", "search --index {d}/good.khi --run {run} --images {d}/ok.npy",
     "KH_SEARCH_THREADS must be", {"KH_SEARCH_THREADS": "abc"}),
    ("KH_SEARCH_THREADS zero", "search --index {d}/good.khi --run {run} --images {d}/ok.npy",
     "KH_SEARCH_THREADS must be", {"KH_SEARCH_THREADS": "0"}),
    ("TF_CONFIG not JSON", "fit --strategy multiworker", "TF_CONFIG is not valid JSON",
     {"TF_CONFIG": "{bad"}),
    ("TF_CONFIG without its task", "fit --strategy multiworker", "TF_CONFIG needs \"task\"",
     {"TF_CONFIG": '{"cluster": {"worker": ["localhost:1"]}}'}),
]


@contextlib.contextmanager
def _deadline(seconds):
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", BAD_INPUT_CASES, ids=[c[0] for c in BAD_INPUT_CASES])
def test_bad_input_one_line_exit_2(case, bad_inputs, capsys, monkeypatch, tmp_path):
    d, run = bad_inputs
    monkeypatch.chdir(tmp_path)  # default run directories would land here
    if case[0] == "export over an existing version":
        os.makedirs(d / "sm" / "m" / "1", exist_ok=True)
    for key, value in (case[3] if len(case) > 3 else {}).items():
        monkeypatch.setenv(key, value)
    argv = case[1].format(d=d, run=run).split()
    with _deadline(120):  # a read that blocks (a named pipe) fails instead of hanging
        code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("keras-hashing: error:"), err
    assert case[2] in err, err
    assert not (tmp_path / "runs").exists(), "a failed command left a run directory behind"


def test_tf_serving_error_body_becomes_one_line(bad_inputs, capsys, tmp_path):
    from tf_serving_stub import TFServingStub

    d, _ = bad_inputs
    (tmp_path / "empty").mkdir()
    with TFServingStub(str(tmp_path / "empty")) as server:
        code = cli.main(["search", "--index", str(d / "good.khi"), "--serving-url", server.url,
                         "--model", "absent", "--images", str(d / "ok.npy")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "HTTP 404: Could not find any versions of model absent" in err


def test_bad_outputs_left_the_inputs_whole(bad_inputs):
    """After the whole table ran: the run still loads, the shards are unchanged."""
    from keras_hashing import runs

    d, run = bad_inputs
    assert runs.load_run(run).model.bits == 24
    assert len(HammingIndex.load(d / "good.khi")) == 4


def test_there_are_at_least_30_bad_input_cases():
    assert len(BAD_INPUT_CASES) + 1 >= 30


@pytest.mark.parametrize("spec, pipe", [("folder:{d}/fifofolder", "pipe.png"),
                                        ("list:{d}/listfifo.txt", "fifo.png")])
def test_named_pipes_are_left_out_as_bad_images(spec, pipe, bad_inputs, tmp_path, capsys):
    d, run = bad_inputs
    out = tmp_path / "codes.npz"
    with _deadline(120):
        code = cli.main(["encode", "--run", str(run), "--images", spec.format(d=d),
                         "--on-bad-image", "skip", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert pipe in err and "warning" in err
    with np.load(out) as saved:
        assert pipe not in " ".join(str(p) for p in saved["paths"])
        assert len(saved["paths"]) == (10 if spec.startswith("folder") else 1)


def test_a_refused_export_leaves_no_folders(bad_inputs, capsys):
    d, run = bad_inputs
    # TF Serving reads a version as int64: 2^63 and past it are refused too
    for version in ("0", "-3", str(2**63), "9" * 40):
        assert cli.main(["export", "--run", str(run), "--base", str(d / "newbase"), "--name",
                         "m", "--version", version]) == 2
        assert "version must be an integer from 1 to" in capsys.readouterr().err
        assert not (d / "newbase").exists()


@pytest.mark.parametrize("kind", ["list", "csv"])
def test_a_byte_order_mark_is_not_part_of_the_first_path(kind, tmp_path):
    from keras_hashing.data import image_files

    text = ("a.jpg 0\nb.jpg 1\n" if kind == "list" else "path,label\na.jpg,x\nb.jpg,y\n")
    listing = tmp_path / f"l.{kind}"
    listing.write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's "CSV UTF-8"
    read = image_files.read_list_file if kind == "list" else image_files.read_csv_file
    collection = read(str(listing))
    assert [os.path.basename(p) for p in collection.paths] == ["a.jpg", "b.jpg"]


# -- one writer per output ----------------------------------------------------------------
def _hold_lock_in_another_process(code):
    """Start a Python process that runs ``code`` (taking a writer's lock) and then waits;
    returns it once it says it holds the lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", code + "\nprint('held', flush=True)\nimport time\n"
         "time.sleep(600)"], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_index_build_of_one_output_is_refused_and_a_killed_one_frees_it(
        trained_run, tmp_path, capsys):
    """Two builders of one index file: the second is refused in one line before it
    touches the work folder; once the first is killed (-9) the next build takes over the
    work folder it left and finishes an index of the run's codes only."""
    from keras_hashing.search.index import HammingIndex

    out = tmp_path / "x.khi"
    holder = _hold_lock_in_another_process(
        "import numpy as np\nfrom keras_hashing.search.builder import IndexBuilder\n"
        f"b = IndexBuilder({str(out)!r}, 48, {{'run': 'someone else'}})\n"
        "b.append(np.zeros((3, 6), np.uint8), consumed=3)\nb.checkpoint()")
    try:
        assert cli.main(["index", "build", "--run", str(trained_run.path), "--out", str(out),
                         "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "being written by another keras-hashing process" in err[0]
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the killed build's folder holds other inputs: refused as such, not mixed in
    assert cli.main(["index", "build", "--run", str(trained_run.path), "--out", str(out),
                     "--quiet"]) == 2
    assert "interrupted build of other inputs" in capsys.readouterr().err
    shutil.rmtree(str(out) + ".partial")
    assert cli.main(["index", "build", "--run", str(trained_run.path), "--out", str(out),
                     "--quiet"]) == 0
    index = HammingIndex.load(out)
    assert len(index) == len(np.unique(index.ids)) and not os.path.exists(str(out) + ".partial")


def test_concurrent_exports_of_one_name_one_wins_the_others_are_one_line(
        trained_run, tmp_path):
    """Three exports of one name started together: each either writes a whole version or
    is refused in one line (exit 2); never a traceback, never two versions half-written."""
    base = tmp_path / "models"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "keras_hashing", "export", "--run", str(trained_run.path),
         "--base", str(base), "--name", "m", "--version", "7"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and set(codes[1:]) <= {0, 2}, results
    for code, err in results:
        if code == 2:
            last = err.strip().splitlines()[-1]
            assert "Traceback" not in err and last.startswith("keras-hashing: error:"), err
            assert "being written by another" in last or "already exists" in last
    assert sorted(os.listdir(base / "m")) == ["7", "metadata.json"]
    assert (base / "m" / "7" / "saved_model.pb").is_file()


def test_an_export_waits_for_no_one_and_a_killed_exporter_leaves_no_stale_lock(
        trained_run, tmp_path, capsys):
    base = tmp_path / "models"
    (base / "m").mkdir(parents=True)
    holder = _hold_lock_in_another_process(
        "from keras_hashing.fileio import OutputLock\n"
        f"lock = OutputLock({str(base / 'm' / '.export.lock')!r}, 'm')")
    try:
        assert cli.main(["export", "--run", str(trained_run.path), "--base", str(base),
                         "--name", "m"]) == 2
        assert "being written by another" in capsys.readouterr().err
        assert sorted(os.listdir(base / "m")) == [".export.lock"]
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(["export", "--run", str(trained_run.path), "--base", str(base),
                     "--name", "m"]) == 0
    assert (base / "m" / "1" / "saved_model.pb").is_file()
