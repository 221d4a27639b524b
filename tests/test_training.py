import os

import pytest

from keras_hashing.errors import RunDirError
from keras_hashing.training.runs import MODEL_FILE, default_run_dir, load_run


def test_default_run_dir_never_overwrites_a_finished_run(tmp_path):
    cfg = {"method": "ssdh", "dataset": "folder:/data/my photos", "bits": 32}
    first = default_run_dir(cfg, base=str(tmp_path))
    assert first.endswith("ssdh_folder__data_my_photos_32b")
    os.makedirs(first)
    open(os.path.join(first, MODEL_FILE), "w").close()
    assert default_run_dir(cfg, base=str(tmp_path)).endswith("_32b_2")


def test_run_files_are_complete(trained_run):
    assert sorted(os.listdir(trained_run.path)) == ["config.yaml", "logs", "metrics.json",
                                                    "model.keras", "run.json"]
    assert os.listdir(os.path.join(trained_run.path, "logs"))  # TensorBoard events
    m = trained_run.metrics
    assert {"map_all", "map_1000", "p_r2", "p_at_k"} <= set(m["query"])
    assert m["num_query"] == 359 and m["epochs_run"] == 8


def test_corrupt_model_file_is_reported(trained_run, tmp_path):
    import shutil

    bad = tmp_path / "run"
    shutil.copytree(trained_run.path, bad)
    (bad / MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(RunDirError, match="model.keras: cannot load the model"):
        load_run(str(bad))
    with pytest.raises(RunDirError, match="does not exist"):
        load_run(str(tmp_path / "nope"))


@pytest.mark.parametrize("schedule, end", [("cosine", 0.0), ("constant", 0.01)])
def test_learning_rate_warms_up_then_follows_its_schedule(schedule, end):
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import make_optimizer

    cfg = resolve_config(overrides={"epochs": 10, "learning_rate": 0.01,
                                    "lr_schedule": schedule, "lr_warmup_epochs": 2})
    schedule_of = make_optimizer(cfg, steps_per_epoch=100)._learning_rate
    rates = [float(schedule_of(step)) for step in (0, 100, 200, 600, 1000)]
    # linear from 0 over the 200 warm-up steps, then the schedule from the full rate
    assert rates[:3] == pytest.approx([0.0, 0.005, 0.01], abs=1e-7)
    assert rates[3] == pytest.approx(0.005 if schedule == "cosine" else 0.01, abs=1e-6)
    assert rates[4] == pytest.approx(end, abs=1e-7)


def test_warm_up_as_long_as_training_is_refused():
    from keras_hashing.training.config import resolve_config
    from keras_hashing.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lr_warmup_epochs \(5\) must be fewer than epochs"):
        resolve_config(overrides={"epochs": 5, "lr_warmup_epochs": 5})


def test_adamw_decays_the_weights_and_drops_the_l2_term():
    import keras
    import numpy as np

    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import l2_weight_decay, make_optimizer

    cfg = resolve_config(overrides={"optimizer": "adamw", "weight_decay": 0.1,
                                    "lr_schedule": "constant", "learning_rate": 0.5})
    assert l2_weight_decay(cfg) == 0.0
    assert l2_weight_decay({**cfg, "optimizer": "adam"}) == 0.1
    optimizer = make_optimizer(cfg, steps_per_epoch=10)
    kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
    bias = keras.Variable(np.ones(2, np.float32), name="bias")
    optimizer.apply([np.zeros((2, 2), np.float32), np.zeros(2, np.float32)], [kernel, bias])
    # zero gradients: only the decoupled decay moves the kernel, w -= lr * wd * w; the bias
    # is excluded from decay
    assert np.allclose(kernel.numpy(), 1 - 0.5 * 0.1)
    assert np.allclose(bias.numpy(), 1.0)


@pytest.mark.parametrize("method", ["ssdh", "classifier-code"])
def test_label_smoothing_out_of_range_is_refused(method):
    from keras_hashing.errors import ConfigError
    from keras_hashing.models.methods import get_method

    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        get_method(method)(bits=12, input_shape=(8, 8, 1), num_classes=10,
                           params={"label_smoothing": 1.5})
