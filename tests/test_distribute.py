"""tf.distribute: global-batch losses and exact replica equivalence, on logical CPUs."""

import json
import os
import subprocess
import sys

import pytest

from keras_hashing.methods import method_names, get_method

HERE = os.path.dirname(__file__)
GRADIENT_METHODS = [m for m in method_names() if get_method(m).gradient_training]
# NAME+PARAM runs NAME with a boolean parameter on: DPSH's memory bank is per-example
# state written inside the replica step
VARIANTS = GRADIENT_METHODS + ["dpsh+memory_bank"]


@pytest.fixture(scope="module")
def equivalence():
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "scripts", "replica_equivalence.py"),
         *VARIANTS], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["method"]: r for r in rows}


@pytest.mark.parametrize("method", VARIANTS)
def test_one_step_on_two_replicas_equals_one_device(equivalence, method):
    row = equivalence[method]
    if method == "dmrh":
        # DMRH needs a convolutional backbone, whose BatchNormalization normalises with
        # each replica's own half-batch statistics (Keras' default): close, not equal.
        assert row["max_weight_diff"] < 1e-2 * max(1.0, row["max_weight"])
    else:
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
         "--epochs", "6", "--learning-rate", "0.005", "--strategy", "mirrored", "--logical-cpus", "2", "--out", str(out),
         "--quiet", "--set", "val_database_size=500", "--set", "tensorboard_samples=50"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["strategy"] == {"kind": "MirroredStrategy", "replicas": 2}
    assert metrics["query"]["map_all"] > 0.5  # it learned (chance is about 0.1)


def test_multiworker_is_refused_with_the_upstream_reason(tmp_path):
    from keras_hashing import cli

    code = cli.main(["fit", "--strategy", "multiworker", "--epochs", "1",
                     "--out", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()
