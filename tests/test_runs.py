"""The run directory as a transaction (keras_hashing.runs): what a folder is, who may
write it, what a resume must match, and what a finished run holds."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_hashing.cli import main as cli

from keras_hashing import configfile
from keras_hashing.training import config

from keras_hashing import runs
from keras_hashing.errors import HashingError, RunDirError

FAST = ["--epochs", "1", "--bits", "12", "--quiet", "--set", "val_database_size=200",
        "--set", "tensorboard_samples=20"]


def _interrupted_run(path, cfg, epoch=1):
    """A run folder as a kill after an epoch's backup leaves it."""
    os.makedirs(path / "backup", exist_ok=True)
    (path / "config.yaml").write_text(configfile.dump(cfg))
    (path / "run.json").write_text(json.dumps({"format": runs.RUN_FORMAT, "state": "training"}))
    (path / "backup" / "state.json").write_text(json.dumps({"epoch": epoch,
                                                            "weights": "ckpt-1.weights.h5"}))


def test_status_tells_every_kind_of_folder(tmp_path, trained_run):
    cfg = config.resolve_config()
    assert runs.status(tmp_path / "none") == "missing"
    (tmp_path / "empty").mkdir()
    assert runs.status(tmp_path / "empty") == "empty"
    (tmp_path / "file").write_text("x")
    assert runs.status(tmp_path / "file") == "foreign"
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "config.yaml").write_text("mine: true\n")
    assert runs.status(tmp_path / "photos") == "foreign"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("[1, 2]")
    assert runs.status(tmp_path / "bad") == "foreign"
    _interrupted_run(tmp_path / "killed", cfg)
    assert runs.status(tmp_path / "killed") == "training"
    assert runs.status(trained_run.path) == "finished"
    # a run written before run.json existed: model and config, no backup
    (tmp_path / "legacy").mkdir()
    for name in ("model.keras", "config.yaml"):
        (tmp_path / "legacy" / name).write_text("x")
    assert runs.status(tmp_path / "legacy") == "finished"


def test_a_folder_that_is_not_a_run_is_never_written_without_force(tmp_path, capsys):
    """The backup folder of a user's own project must survive a fit into its parent."""
    out = tmp_path / "p"
    (out / "backup").mkdir(parents=True)
    (out / "backup" / "precious.txt").write_text("keep")
    (out / "config.yaml").write_text("mine: true\n")
    assert cli.main(["fit", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "not a run" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "config.yaml").read_text() == "mine: true\n"
    assert sorted(os.listdir(out)) == ["backup", "config.yaml"]
    # --force writes beside the user's files, never over them: their config.yaml would be
    # replaced, so it is refused, naming the file
    for name, text in (("config.yaml", "mine: true\n"), ("metrics.json", "{}"),
                       ("model.keras", "mine"), ("run.json", "[]")):
        (out / name).write_text(text)
        assert cli.main(["fit", "--out", str(out), "--force", *FAST]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{out / name} is not a keras-hashing run" in err
        assert (out / name).read_text() == text
        (out / name).rename(out / f"mine-{name}")
    (out / "logs").mkdir()
    (out / "logs" / "notes.txt").write_text("mine")
    assert cli.main(["fit", "--out", str(out), "--force", *FAST]) == 0
    assert (out / "backup" / "precious.txt").read_text() == "keep"
    assert runs.load_run(str(out)).metrics["epochs_run"] == 1
    assert sorted(os.listdir(out / "backup")) == ["precious.txt"]
    assert (out / "mine-config.yaml").read_text() == "mine: true\n"
    # a restart removes the run's own logs and outputs; the user's files under logs/ stay
    events = sorted(p for p in (out / "logs").rglob("events.out.tfevents*"))
    assert events
    assert cli.main(["fit", "--out", str(out), "--restart", *FAST]) == 0
    assert (out / "logs" / "notes.txt").read_text() == "mine"
    assert not any(p.exists() for p in events)  # replaced by the new run's event files
    assert (out / "mine-model.keras").read_text() == "mine"


def test_a_resume_must_have_the_settings_the_run_started_with(tmp_path):
    cfg = config.resolve_config(overrides={"bits": 12})
    _interrupted_run(tmp_path / "r", cfg)
    changed = config.resolve_config(overrides={"bits": 12, "learning_rate": 0.01, "seed": 3,
                                               "epochs": 40})
    with pytest.raises(RunDirError) as e:
        runs.check_writable(tmp_path / "r", changed)
    assert "epochs, learning_rate, seed" in str(e.value) and "--restart" in str(e.value)
    assert runs.check_writable(tmp_path / "r", changed, restart=True) == "training"
    # where the data lives may change between the kill and the resume
    moved = config.resolve_config(overrides={"bits": 12, "data_dir": "/mnt/elsewhere"})
    assert runs.check_writable(tmp_path / "r", moved) == "training"
    # a default run directory skips an interrupted run of other settings
    base = tmp_path / "runs"
    _interrupted_run(base / "ssdh_digits_12b", cfg)
    assert runs.default_run_dir(cfg, base=str(base)).endswith("ssdh_digits_12b")
    assert runs.default_run_dir(changed, base=str(base)).endswith("ssdh_digits_12b_2")


def test_a_run_written_before_a_setting_existed_resumes_under_its_old_value(tmp_path):
    """An upgrade that adds a setting keeps older interrupted runs resumable: a config.yaml
    without ``validation`` trained with validation from the training split."""
    cfg = config.resolve_config(overrides={"bits": 12})
    assert cfg["validation"] == "from-train"
    older = {k: v for k, v in cfg.items() if k not in runs.SETTINGS_BEFORE_ADDED}
    _interrupted_run(tmp_path / "r", older)
    assert runs.check_writable(tmp_path / "r", cfg) == "training"
    # but the old value is a value: a resume asking for another one is refused
    other = config.resolve_config(overrides={"bits": 12, "validation": "none"})
    with pytest.raises(RunDirError, match=r"other settings \(validation\)"):
        runs.check_writable(tmp_path / "r", other)


def test_restart_trains_a_finished_run_again(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["fit", "--out", str(out), *FAST]) == 0
    first = runs.load_run(str(out)).model.get_weights()
    (out / "plots").mkdir()  # the user's own outputs in the run stay
    (out / "logs" / "notes.txt").write_text("what I tried")  # also under logs/
    (out / "logs" / "train" / "mine.csv").write_text("1,2")
    assert cli.main(["fit", "--out", str(out), *FAST]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert cli.main(["fit", "--out", str(out), "--restart", *FAST, "--seed", "5"]) == 0
    again = runs.load_run(str(out))
    # trained again from seed 5, not the first run kept (its train_seconds, rounded to
    # 0.01 s, can repeat by chance; the weights of another seed do not)
    assert again.config["seed"] == 5
    assert any(not np.array_equal(a, b) for a, b in zip(first, again.model.get_weights()))
    assert (out / "plots").is_dir()
    assert (out / "logs" / "notes.txt").read_text() == "what I tried"
    assert (out / "logs" / "train" / "mine.csv").read_text() == "1,2"


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_of_the_same_run_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    _interrupted_run(out, config.resolve_config(overrides={"bits": 12, "epochs": 1,
                                                           "val_database_size": 200}))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out / runs.LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli.main(["fit", "--out", str(out), *FAST]) == 2
        err = capsys.readouterr().err
        assert "being written by another keras-hashing process" in err
    finally:
        holder.kill()
        holder.wait()
    # the folder is as the other writer left it
    assert json.loads((out / "backup" / "state.json").read_text())["epoch"] == 1


def test_two_fits_racing_for_one_folder_leave_one_whole_run(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "keras_hashing", "fit", "--out", str(out), *FAST]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another keras-hashing process" in loser or "finished run" in loser
    assert runs.load_run(str(out)).metrics["epochs_run"] == 1


def test_non_finite_settings_are_refused(capsys):
    for argv in (["--learning-rate", "nan"], ["--set", "params.beta=.inf"],
                 ["--set", "weight_decay=-.inf"]):
        assert cli.main(["fit", *argv]) == 2
        assert "must be a finite number" in capsys.readouterr().err


def test_a_diverging_run_stops_naming_epoch_and_step_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    code = cli.main(["fit", "--out", str(out), *FAST, "--epochs", "2", "--learning-rate",
                     "1e8", "--set", "optimizer=sgd"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "training diverged" in err and "at epoch 1, step" in err
    assert not out.exists()  # nothing trained: nothing left


def test_the_divergence_check_runs_before_the_backup_of_a_bad_epoch():
    import keras

    from keras_hashing.training.callbacks import NonFiniteLossError, StopOnNonFinite

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    guard = StopOnNonFinite()
    guard.set_model(model)
    guard.on_epoch_end(0)  # finite weights pass
    with pytest.raises(NonFiniteLossError, match="step 7"):
        guard.on_train_batch_end(6, {"loss": float("nan")})
    model.layers[0].kernel.assign(np.full((2, 1), np.inf, np.float32))
    with pytest.raises(NonFiniteLossError, match="in epoch 3"):
        guard.on_epoch_end(2)


def test_a_model_with_nan_weights_is_never_saved_as_finished(tmp_path, trained_run):
    model = trained_run.model
    weights = model.get_weights()
    try:
        model.set_weights([np.full_like(w, np.nan) if i == 0 else w
                           for i, w in enumerate(weights)])
        with pytest.raises(RunDirError, match="NaN or infinite"):
            runs.save_run(str(tmp_path), model, trained_run.config, {})
    finally:
        model.set_weights(weights)
    assert not (tmp_path / "model.keras").exists()


def test_a_malformed_backup_is_one_line_naming_restart(tmp_path, capsys):
    out = tmp_path / "r"
    cfg = config.resolve_config(overrides={"bits": 12, "epochs": 1, "val_database_size": 200,
                                           "tensorboard_samples": 20})
    for state in ('{"epoch": "x", "weights": "ckpt-1.weights.h5"}', "[]",
                  '{"epoch": 1, "weights": "../../etc/passwd"}', "not json"):
        _interrupted_run(out, cfg)
        (out / "backup" / "state.json").write_text(state)
        assert cli.main(["fit", "--out", str(out), *FAST]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "backup" in err and "--restart" in err, err


def test_an_unfinished_run_is_refused_by_every_reader(tmp_path):
    _interrupted_run(tmp_path / "r", config.resolve_config())
    with pytest.raises(RunDirError, match="not finished"):
        runs.load_run(str(tmp_path / "r"))
    assert cli.main(["evaluate", "--run", str(tmp_path / "r")]) == 2


def test_run_files_keep_the_umask_permissions(tmp_path):
    from keras_hashing import fileio

    old = os.umask(0o027)
    try:
        fileio.write_json(tmp_path / "a.json", {"a": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
        os.chmod(tmp_path / "a.json", 0o604)  # a replaced file keeps its own mode
        fileio.write_json(tmp_path / "a.json", {"a": 2})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


def test_a_full_disk_is_one_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from keras_hashing import fileio

    fileio.write_json(tmp_path / "m.json", {"old": True})

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "_fsync_file", full)
    with pytest.raises(HashingError, match="m.json: cannot write .No space left"):
        fileio.write_json(tmp_path / "m.json", {"old": False})
    assert json.loads((tmp_path / "m.json").read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["m.json"]  # no temporary file left


def test_index_of_another_model_is_refused(tmp_path, trained_run):
    from keras_hashing.codes import pack_bits
    from keras_hashing.search.index import HammingIndex

    index = HammingIndex(trained_run.model.bits)
    index.add(pack_bits(np.zeros((3, trained_run.model.bits))))
    index.metadata = {"model_sha256": "0" * 64, "method": "ssdh", "run": "/elsewhere"}
    with pytest.raises(RunDirError, match="built by another model"):
        runs.check_index_matches_run(trained_run, index, "index x.khi")
    index.metadata = {"method": "dsh"}  # an older index: only the method is known
    with pytest.raises(RunDirError, match="built by another model"):
        runs.check_index_matches_run(trained_run, index, "index x.khi")
    index.metadata = {"model_sha256": runs.model_digest(trained_run.path)}
    runs.check_index_matches_run(trained_run, index, "index x.khi")
    other = HammingIndex(index.bits)
    other.add(index.codes)
    other.metadata = {"model_sha256": "1" * 64}
    with pytest.raises(HashingError, match="different models"):
        HammingIndex.merge([index, other])


def test_restart_of_a_killed_run_removes_only_what_its_processes_wrote(tmp_path):
    """A fit killed (-9) after a backup, then the user adds files under logs/ (notes, a
    CSV beside the event files, another program's event file): --restart removes the
    killed run's own files and none of the user's."""
    out = tmp_path / "r"
    fit = subprocess.Popen(
        [sys.executable, "-m", "keras_hashing", "fit", "--out", str(out), "--epochs", "60",
         "--bits", "12", "--quiet", "--set", "val_database_size=200",
         "--set", "tensorboard_samples=20"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / "backup" / "state.json").exists():
        assert fit.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    fit.kill()
    fit.wait()
    written = [p.relative_to(out) for p in (out / "logs").rglob("*") if p.is_file()]
    assert any("tfevents" in str(p) for p in written)
    mine = {"logs/notes.txt": "mine", "logs/train/mine.csv": "1,2",
            "logs/train/events.out.tfevents.1.otherhost.1.0.v2": "not the run's",
            "logs/hashing/my-sprite.png": "x"}
    for name, text in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    assert cli.main(["fit", "--out", str(out), "--restart", *FAST]) == 0
    for name, text in mine.items():
        assert (out / name).read_text() == text, name
    assert not any((out / p).exists() for p in written if "tfevents" in str(p))
    assert runs.load_run(str(out)).metrics["epochs_run"] == 1
