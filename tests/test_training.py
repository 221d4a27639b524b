import os

import pytest

from keras_hashing.errors import RunDirError
from keras_hashing.runs import MODEL_FILE, default_run_dir, load_run


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


@pytest.mark.parametrize("method", ["ssdh", "classifier-code"])
def test_label_smoothing_out_of_range_is_refused(method):
    from keras_hashing.errors import ConfigError
    from keras_hashing.models.methods import get_method

    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        get_method(method)(bits=12, input_shape=(8, 8, 1), num_classes=10,
                           params={"label_smoothing": 1.5})
