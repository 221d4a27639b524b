"""Collapsed codes are never silent; stale BatchNormalization statistics are re-estimated."""

import json

import numpy as np
import pytest

from keras_hashing.evaluation import collapse_check


@pytest.mark.parametrize("bits, labels, collapsed", [
    # one code for every image: collapsed however many classes
    (np.zeros((6, 8), np.uint8), [0, 0, 1, 1, 2, 2], True),
    (np.ones((6, 8), np.uint8), None, True),
    # two distinct codes for three classes: two classes share one code
    (np.repeat(np.eye(2, 8, dtype=np.uint8), 3, axis=0), [0, 0, 1, 1, 2, 2], True),
    # one code per class (CSQ's centres): healthy, though 3 codes for 6 images
    (np.repeat(np.eye(3, 8, dtype=np.uint8), 2, axis=0), [0, 0, 1, 1, 2, 2], False),
    # 5 of 8 bits never change, yet every class has its own code: not collapsed
    (np.repeat(np.eye(3, 8, dtype=np.uint8), 2, axis=0), [0, 0, 1, 1, 2, 2], False),
    # without labels only a single code is a collapse
    (np.repeat(np.eye(2, 8, dtype=np.uint8), 3, axis=0), None, False),
    # a single image cannot collapse
    (np.zeros((1, 8), np.uint8), [0], False),
    # multi-label: classes are the label columns in use (2 here); 2 codes are enough
    (np.repeat(np.eye(2, 8, dtype=np.uint8), 2, axis=0), [[1, 0], [1, 0], [1, 1], [1, 1]],
     False),
    # ... and one code for two classes is a collapse, however the sets combine
    (np.zeros((4, 8), np.uint8), [[1, 0], [0, 1], [1, 1], [1, 1]], True),
])
def test_collapse_check_cases(bits, labels, collapsed):
    check = collapse_check(bits, labels)
    assert check["collapsed"] is collapsed
    assert (check["message"] is None) is (not collapsed)
    assert check["distinct_codes"] == len(np.unique(bits, axis=0))


def test_multi_label_codes_are_judged_against_label_columns_not_label_sets():
    """2,000 images of NUS-WIDE's shape: 21 concepts, hundreds of distinct label sets. A
    code per concept is healthy, one code fewer than the concepts is not."""
    rng = np.random.default_rng(0)
    labels = (rng.random((2000, 21)) < 0.15).astype(np.uint8)
    labels[np.arange(2000), rng.integers(0, 21, 2000)] = 1  # every image has a concept
    assert len(np.unique(labels, axis=0)) > 500
    concept = labels.argmax(axis=1)
    codes = np.unpackbits(concept.astype(np.uint8)[:, None], axis=1)  # 21 distinct codes
    check = collapse_check(codes, labels)
    assert check["classes"] == 21 and check["distinct_codes"] == 21 and not check["collapsed"]
    assert collapse_check(np.minimum(codes, np.unpackbits(np.uint8([19]))), labels)["collapsed"]


def test_collapse_message_names_the_numbers():
    check = collapse_check(np.zeros((5, 16), np.uint8), labels=[0, 1, 2, 3, 4])
    assert check["message"] == ("the codes look collapsed: 1 distinct code(s) for 5 images "
                                "of 5 classes, 16 of 16 bits never change")


def _bn_model(momentum):
    import keras

    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(4),
                             keras.layers.BatchNormalization(momentum=momentum)])


def test_staleness_follows_the_momentum_and_the_steps():
    from keras_hashing.training.batchnorm import stale_batch_norms

    fast, slow = _bn_model(0.9), _bn_model(0.999)
    # 0.9 ** 28 = 0.052 still holds over 5% of the start; 0.9 ** 29 = 0.047 does not
    assert len(stale_batch_norms(fast, 28)) == 1 and stale_batch_norms(fast, 29) == []
    # momentum 0.999 needs 2,995 steps
    assert len(stale_batch_norms(slow, 2994)) == 1 and stale_batch_norms(slow, 2995) == []
    slow.layers[-1].trainable = False  # a frozen layer never trained: it is never touched
    assert stale_batch_norms(slow, 10) == []


def test_recalibration_gives_the_population_statistics_and_nothing_else():
    from keras_hashing.training.batchnorm import recalibrate_batch_norm

    model = _bn_model(0.999)
    rng = np.random.default_rng(0)
    x = rng.normal([3.0, -2.0, 0.5, 10.0], [1.0, 2.0, 0.1, 5.0], (2000, 4)).astype("float32")
    dense = model.layers[0]
    features = np.asarray(dense(x))
    kernel = np.array(dense.kernel)
    bn = model.layers[-1]
    used = recalibrate_batch_norm(model, np.array_split(x, 20), max_batches=16)
    assert used == 16
    seen = features[: sum(len(b) for b in np.array_split(x, 20)[:16])]
    np.testing.assert_allclose(np.array(bn.moving_mean), seen.mean(axis=0), rtol=1e-4,
                               atol=1e-4)
    # the mean of per-batch variances: the population variance less the spread of the
    # batch means, about 1% here
    np.testing.assert_allclose(np.array(bn.moving_variance), seen.var(axis=0), rtol=0.05)
    assert bn.momentum == 0.999  # restored
    np.testing.assert_array_equal(np.array(dense.kernel), kernel)


def _event_scalars(log_dir, tag):
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


SHORT_FIT = ["--method", "ssdh", "--bits", "16", "--epochs", "2", "--backbone", "flatten",
             "--quiet", "--set", "val_database_size=300", "--set", "tensorboard_samples=100"]


def test_a_collapsed_model_says_so_in_fit_evaluate_tensorboard_and_index(
        tmp_path, capsys, monkeypatch):
    """SSDH forced to collapse: its latent layer ignores the image (every bit 1)."""
    from keras import ops

    from keras_hashing.cli.main import main
    from keras_hashing.models.layers import SigmoidLatent

    monkeypatch.setattr(SigmoidLatent, "call",
                        lambda self, inputs: ops.sigmoid(0.0 * self.dense(inputs) + 1.0))
    run = tmp_path / "run"
    assert main(["fit", "--out", str(run), *SHORT_FIT]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "collapsed" in line]
    metrics = json.loads((run / "metrics.json").read_text())
    # once after validation (epoch 1), then once per evaluated split
    tail = "images of 10 classes, 16 of 16 bits never change"
    assert warnings == [
        "keras-hashing: warning: epoch 1, validation queries: the codes look collapsed: "
        f"1 distinct code(s) for {metrics['num_val']} {tail}",
        "keras-hashing: warning: query: the codes look collapsed: 1 distinct code(s) for "
        f"{metrics['num_query']} {tail}",
        "keras-hashing: warning: database: the codes look collapsed: 1 distinct code(s) "
        f"for {metrics['num_database']} {tail}"]
    assert metrics["query"]["collapse"]["collapsed"] is True
    assert metrics["query"]["collapse"]["database"]["distinct_codes"] == 1
    assert metrics["validation"]["collapsed_epochs"] == [1, 2]
    assert _event_scalars(run / "logs" / "hashing", "bits/collapsed") == [1.0, 1.0]
    assert _event_scalars(run / "logs" / "hashing", "bits/distinct_codes") == [1.0, 1.0]

    assert main(["evaluate", "--run", str(run)]) == 0
    assert "query: the codes look collapsed" in capsys.readouterr().err
    assert main(["index", "build", "--run", str(run), "--split", "database",
                 "--out", str(tmp_path / "db.khi"), "--quiet"]) == 0
    assert f"index {tmp_path / 'db.khi'}: the codes look collapsed" in capsys.readouterr().err


def test_a_healthy_fit_warns_of_nothing_and_records_its_recalibration(tmp_path, capsys):
    from keras_hashing.cli.main import main

    run = tmp_path / "run"
    # (SSDH's 2-epoch codes are collapsed for real: 2 or 3 codes, mAP 0.13; CSQ's are not)
    # the default small CNN: BatchNormalization with momentum 0.9, 21 steps an epoch, so
    # stale after epoch 1 (0.9 ** 21 = 0.11) and not after epoch 2 (0.01)
    assert main(["fit", "--out", str(run), *SHORT_FIT, "--method", "csq",
                 "--backbone", "small_cnn"]) == 0
    assert "collapsed" not in capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["query"]["collapse"]["collapsed"] is False
    assert metrics["validation"]["collapsed_epochs"] == []
    assert metrics["batchnorm_recalibrated_epochs"] == [1]
    assert _event_scalars(run / "logs" / "hashing", "bits/collapsed") == [0.0, 0.0]


FOLDER_FIT = ["--backbone", "applications:MobileNetV3Small", "--weights", "none",
              "--image-size", "32", "--bits", "16", "--epochs", "2", "--batch-size", "16",
              "--quiet", "--set", "tensorboard_samples=40"]


def _stripes(folder, per_class=40):
    """Two classes a small CNN tells apart at once: horizontal and vertical stripes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    for cls, axis in enumerate((yy, xx)):
        (folder / f"c{cls}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.uniform(0, 60, (32, 32, 3)) + 150 * (np.sin(axis / 2 + i) > 0)[..., None]
            Image.fromarray(img.astype(np.uint8)).save(folder / f"c{cls}" / f"{i}.png")
    return folder


@pytest.mark.slow
def test_recalibration_saves_a_mobilenet_fine_tune_from_collapse(tmp_path, capsys):
    """The real case (about 2 minutes): MobileNetV3's momentum 0.999 after 8 steps leaves
    the initial inference statistics, and every image gets one code."""
    from keras_hashing.cli.main import main

    stripes = _stripes(tmp_path / "folder")
    stale, fixed = tmp_path / "stale", tmp_path / "fixed"
    assert main(["fit", "--dataset", f"folder:{stripes}", "--out", str(stale), *FOLDER_FIT,
                 "--set", "recalibrate_batchnorm=false"]) == 0
    assert "collapsed" in capsys.readouterr().err
    metrics = json.loads((stale / "metrics.json").read_text())
    assert metrics["query"]["collapse"]["collapsed"]
    assert main(["fit", "--dataset", f"folder:{stripes}", "--out", str(fixed),
                 *FOLDER_FIT]) == 0
    assert "collapsed" not in capsys.readouterr().err
    fixed_metrics = json.loads((fixed / "metrics.json").read_text())
    assert not fixed_metrics["query"]["collapse"]["collapsed"]
    assert fixed_metrics["batchnorm_recalibrated_epochs"] == [1, 2]
    # measured over seeds 0-3 and three runs of seed 0 (8 queries, so noisy): 0.657 every
    # time collapsed (ties in file order); recalibrated 0.708 to 0.972, never below +0.05
    assert fixed_metrics["query"]["map_all"] > metrics["query"]["map_all"] + 0.02


def test_a_resumed_fit_reports_the_recalibrations_before_its_resume(tmp_path):
    """Killed (-9) after its first epochs' backups and resumed: metrics.json lists every
    recalibrated epoch, those of the killed process too (the backup carries them)."""
    import os
    import subprocess
    import sys
    import time

    from keras_hashing.cli.main import main

    run = tmp_path / "run"
    argv = ["fit", "--out", str(run), "--epochs", "4", "--bits", "12", "--quiet",
            "--set", "val_database_size=200", "--set", "tensorboard_samples=20",
            "--set", "recalibrate_batchnorm=true", "--backbone", "small_cnn"]
    fit = subprocess.Popen([sys.executable, "-m", "keras_hashing", *argv],
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                           stderr=subprocess.DEVNULL)
    state = run / "backup" / "state.json"
    deadline = time.monotonic() + 240
    while not (state.exists() and json.loads(state.read_text() or "{}").get("epoch", 0) >= 1):
        assert fit.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    fit.kill()
    fit.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < 4
    assert main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == killed_at
    assert metrics["batchnorm_recalibrated_epochs"] == [1, 2, 3, 4]
