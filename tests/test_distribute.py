"""tf.distribute: global-batch losses and exact replica equivalence, on logical CPUs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_hashing.models.methods import method_names, get_method

HERE = os.path.dirname(__file__)
GRADIENT_METHODS = [m for m in method_names() if get_method(m).gradient_training]
# NAME+PARAM runs NAME with a boolean parameter on: DPSH's memory bank is per-example
# state written inside the replica step
VARIANTS = GRADIENT_METHODS + ["dpsh+memory_bank"]


@pytest.fixture(scope="module")
def equivalence():
    # two processes side by side, half the methods each: most of a step is Python tracing
    # on one core, so the pair takes about half the time of one process
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(HERE, "scripts", "replica_equivalence.py"), *half],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}) for half in (VARIANTS[0::2],
                                                                       VARIANTS[1::2])]
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["method"]: r for r in rows}


@pytest.mark.parametrize("method", VARIANTS)
def test_one_step_on_two_replicas_equals_one_device(equivalence, method):
    row = equivalence[method]
    # DMRH runs its convolutional backbone: BatchNormalization is synchronized across
    # replicas (backbones.batch_norm), so it too matches one device
    assert row["max_weight_diff"] < 1e-6 * max(1.0, row["max_weight"]), row
    assert row["bank_diff"] < 1e-6, row  # per-example state matches one device's


def test_memory_bank_step_writes_the_global_batch(equivalence):
    row = equivalence["dpsh+memory_bank"]
    assert row["bank_rows_filled"] == 32  # the one global batch of 32, from both replicas


@pytest.mark.parametrize("method", VARIANTS)
def test_loss_under_two_replicas_is_the_global_batch_loss(equivalence, method):
    row = equivalence[method]
    for value in row["loss_per_replica"]:  # each replica sees the whole batch's pairs
        # float32 sums in another order (DMRH's convolutions): 1e-4
        assert value == pytest.approx(row["loss_one_device"], rel=1e-4, abs=1e-6)


def test_cli_fit_mirrored_on_logical_cpus(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "keras_hashing", "fit", "--method", "dsh", "--bits", "16",
         "--epochs", "6", "--learning-rate", "0.005", "--strategy", "mirrored",
         "--logical-cpus", "2", "--out", str(out), "--quiet",
         "--set", "val_database_size=500", "--set", "tensorboard_samples=50"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["strategy"] == {"kind": "MirroredStrategy", "replicas": 2}
    # it learned (chance is about 0.1); DSH's 6-epoch run on one device: lowest 0.734 over
    # seeds 0-2, oneDNN on and off (tools/quality_spread.py --cases dsh)
    assert metrics["query"]["map_all"] > 0.5


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


# one epoch of 37 global batches of 35 (digits' 1,295 training images split exactly, so
# the single-device run sees the same batches as the workers, which drop a remainder);
# SGD, whose steps scale with the gradient (Adam would hide a mis-scaled one); no dropout
MULTIWORKER_FIT = ["fit", "--method", "dsh", "--bits", "16", "--epochs", "1",
                   "--batch-size", "35", "--learning-rate", "0.005", "--quiet",
                   "--set", "optimizer=sgd", "--set", "backbone_kwargs.dropout=0",
                   "--set", "val_database_size=300",
                   "--set", "tensorboard_samples=50"]


def test_two_workers_on_loopback_train_the_single_device_model(tmp_path):
    """MultiWorkerMirroredStrategy for real: two processes, TF_CONFIG, one fit."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # the single-device reference starts beside the workers: their start-ups overlap
    single = subprocess.Popen(
        [sys.executable, "-m", "keras_hashing", *MULTIWORKER_FIT, "--strategy", "none",
         "--out", str(tmp_path / "single")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "keras_hashing", *MULTIWORKER_FIT, "--strategy",
             "multiworker", "--out", str(tmp_path / "run")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path))
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    summaries = [json.loads(out[out.index("{"):]) for out, _ in outputs]
    # both workers hold the same model: the same query mAP to the last digit
    assert summaries[0]["query_map_all"] == summaries[1]["query_map_all"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["strategy"] == {"kind": "MultiWorkerMirroredStrategy", "replicas": 2}
    assert not (tmp_path / "run" / "backup").exists()
    assert list(scratch.iterdir()) == []  # the other worker's scratch folder is gone

    single_err = single.communicate(timeout=600)[1]
    assert single.returncode == 0, single_err[-3000:]
    from keras_hashing.runs import load_run

    a = load_run(str(tmp_path / "run")).model
    b = load_run(str(tmp_path / "single")).model
    for wa, wb in zip(a.weights, b.weights):  # BatchNorm's moving statistics included
        # measured: 2.4e-7 at most after the 37 steps
        np.testing.assert_allclose(np.asarray(wa), np.asarray(wb), rtol=1e-5, atol=1e-5,
                                   err_msg=wa.path)
