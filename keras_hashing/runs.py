"""Run directories: what a trained run holds, and how it is written and read.

A run directory holds everything needed to use a trained model again:

    RUN/run.json        identity and state ("training", then "finished"), written last
    RUN/config.yaml     the configuration the run trains with (written when it starts)
    RUN/model.keras     the model (architecture + weights), loadable with keras.saving
    RUN/metrics.json    query/database metrics, validation history, timings
    RUN/logs/           TensorBoard event files
    RUN/backup/         epoch-end checkpoints while training (removed once finished)
    RUN/.lock           held by the one process writing the run

The run is a transaction: ``run.json`` says "finished" only after model, config and
metrics are on disk, and the backup is removed only after that, so a kill at any moment
leaves a run that the same ``fit`` command resumes, or a finished run. A folder that is
not a run is never written into without ``force``; a run is resumed only by the
configuration it was started with.

Example:
    >>> import tempfile
    >>> status(tempfile.mkdtemp())
    'empty'
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import socket

from keras_hashing import __version__
from keras_hashing.configfile import dump, load_yaml
from keras_hashing.errors import RunDirError
from keras_hashing.fileio import open_regular, read_json, write_json, write_text

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
STATE_FILE = "run.json"
BACKUP_DIR = "backup"
# inside the backup: a frozen backbone's cached training features (training.feature_cache)
FEATURES_DIR = "features"
LOGS_DIR = "logs"
LOCK_FILE = ".lock"
# What a run itself writes under logs/: TensorBoard event files, named
# events.out.tfevents.<time>.<host>.<pid>.<n>.v2 by the process that writes them (a run
# records each of its processes, so a killed run knows its files), and the projector files
# of HashingTensorBoard under logs/hashing/.
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.\d+\.(?P<host>.+)\.(?P<pid>\d+)\.\d+\.v2$")
_PROJECTOR_FILES = re.compile(r"^(sprite\.png|metadata\.tsv|projector_config\.pbtxt|checkpoint|"
                              r"embedding\.ckpt-\d+\.(index|data-\d+-of-\d+))$")
RUN_FORMAT = "keras-hashing-run"

# Keys that may change when an interrupted run resumes: where the data lives, how the
# work is spread and what is logged, not what is learned.
RESUMABLE_CHANGES = ("data_dir", "download", "strategy", "logical_cpus", "on_bad_image",
                     "tensorboard_samples")
# Settings added after runs were first written, each with the value a run written before
# it trained with: a config.yaml without the key reads as that value, so an upgrade
# neither refuses to resume an older run nor loads other splits for it.
SETTINGS_BEFORE_ADDED = {"validation": "from-train"}


@dataclasses.dataclass
class Run:
    """A finished run read back by ``load_run``."""

    path: str
    model: object  # keras.Model (a HashingModel)
    config: dict
    metrics: dict


def status(path) -> str:
    """What ``path`` is: "missing", "empty", "training" (a run started or interrupted),
    "finished", or "foreign" (a file, or a folder that is not a keras-hashing run).

    Runs written before run.json existed count as finished when they hold a model and a
    config and no backup.
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        return "missing"
    if not os.path.isdir(path):
        return "foreign"
    try:
        names = {n for n in os.listdir(path) if n != LOCK_FILE and not _is_orphan(n)}
    except OSError as e:
        raise RunDirError(f"{path}: cannot read the folder ({e.strerror})") from None
    if STATE_FILE in names:
        try:
            state = read_json(os.path.join(path, STATE_FILE))
        except Exception:  # noqa: BLE001 - any unreadable state file is not ours to trust
            return "foreign"
        if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
            return "foreign"
        return "finished" if state.get("state") == "finished" else "training"
    if not names:
        return "empty"
    if {MODEL_FILE, CONFIG_FILE} <= names and BACKUP_DIR not in names:
        return "finished"
    return "foreign"


def default_run_dir(cfg: dict, base="runs") -> str:
    """runs/<method>_<dataset>_<bits>b, with _2, _3, ... past folders that are taken: the
    first that is free or holds an interrupted run of this same configuration."""
    dataset = "".join(c if c.isalnum() else "_" for c in cfg["dataset"]).strip("_")
    stem = os.path.join(base, f"{cfg['method'].replace('-', '_')}_{dataset}_{cfg['bits']}b")
    path, n = stem, 1
    while True:
        kind = status(path)
        if kind in ("missing", "empty"):
            return path
        if kind == "training" and not config_differences(path, cfg):
            return path
        n += 1
        path = f"{stem}_{n}"


def config_differences(path, cfg: dict) -> list:
    """The keys (dotted) whose value in the run's config.yaml differs from ``cfg``, other
    than those a resume may change; ["config.yaml"] when the file cannot be read."""
    from keras_hashing.errors import HashingError

    try:
        started = load_yaml(os.path.join(path, CONFIG_FILE))
    except HashingError:
        return [CONFIG_FILE]
    started = {**SETTINGS_BEFORE_ADDED, **started}
    return [key for key in _diff(started, cfg) if key.split(".")[0] not in RESUMABLE_CHANGES]


def _diff(a, b, prefix="") -> list:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b), key=str)
        return [k for key in keys for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    same = a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                      and list(a) == list(b))
    return [] if same else [prefix.rstrip(".")]


def has_backup(path) -> bool:
    """Whether an epoch of this run is saved (there is something to resume)."""
    return os.path.isfile(os.path.join(path, BACKUP_DIR, "state.json"))


class RunWriter:
    """Exclusive, transactional writing of one run directory (``fit`` uses it).

    Opening checks what ``path`` holds, takes its lock, and records the run as
    "training" with its configuration; ``finish`` writes model, config and metrics, then
    marks the run finished, then removes the backup; ``discard`` removes what was added
    when nothing was trained.

    Args:
        path: the run directory.
        cfg: the resolved configuration.
        restart: start an interrupted or finished run in ``path`` over.
        force: write into a folder that is not a run (nothing of its own is removed).
    """

    def __init__(self, path, cfg: dict, restart=False, force=False):
        self.path = os.fspath(path)
        self.cfg = cfg
        self.created = None  # the outermost folder this writer created, if any
        self.resuming = False
        self._added = []
        self._lock_fd = None
        check_writable(self.path, cfg, restart, force)
        self.created = _first_missing_ancestor(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot create the run directory "
                              f"({e.strerror})") from None
        self._lock()
        for name in os.listdir(self.path):  # what a kill left of atomic writes
            if _is_orphan(name) and os.path.isfile(os.path.join(self.path, name)):
                _unlink(os.path.join(self.path, name))
        # Checked again under the lock: another writer may have finished meanwhile.
        kind = check_writable(self.path, cfg, restart, force)
        if kind in ("training", "finished") and restart:
            _remove_run_files(self.path)
        self.resuming = kind == "training" and not restart and has_backup(self.path)
        # Files under logs/ that are not the run's (a --force folder's, or a user's notes
        # in a restarted run): kept in run.json, so a later --restart leaves them alone.
        self.user_files = (_recorded(self.path, "user_files") if self.resuming
                           else _files_under(self.path, LOGS_DIR))
        # The processes that wrote this run, this one included: their TensorBoard files
        # are the run's own, whatever else appears under logs/ meanwhile.
        self.writers = ((_recorded(self.path, "writers") if self.resuming else [])
                        + [f"{socket.gethostname()}:{os.getpid()}"])
        for name in (STATE_FILE, CONFIG_FILE, LOGS_DIR):
            if not os.path.exists(os.path.join(self.path, name)):
                self._added.append(name)
        self._write_state("training")
        write_text(os.path.join(self.path, CONFIG_FILE), dump(cfg))

    def _lock(self):
        import fcntl

        lock = os.path.join(self.path, LOCK_FILE)
        if not os.path.exists(lock):
            self._added.append(LOCK_FILE)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot write the run directory "
                              f"({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirError(f"{self.path} is being written by another keras-hashing "
                              "process; wait for it or choose another --out") from None
        self._lock_fd = fd

    def _write_state(self, state: str, own_files=None) -> None:
        write_json(os.path.join(self.path, STATE_FILE),
                   {"format": RUN_FORMAT, "state": state,
                    "keras_hashing_version": __version__,
                    "method": self.cfg["method"], "bits": self.cfg["bits"],
                    "user_files": self.user_files, "writers": self.writers,
                    **({} if own_files is None else {"own_files": own_files})})

    def finish(self, model, metrics: dict) -> None:
        """Write the finished run; the backup goes only once the run is on disk."""
        save_run(self.path, model, self.cfg, metrics)
        own = sorted(f for f in _files_under(self.path, LOGS_DIR)
                     if f not in self.user_files and _written_by_run(f, self.writers))
        self._write_state("finished", own_files=own)
        remove_backup(self.path)
        # Unlinked while still held: a writer that comes later locks a new file and
        # then finds the run finished.
        _unlink(os.path.join(self.path, LOCK_FILE))

    def discard(self) -> None:
        """Undo this writer when no epoch was saved: remove the folders it created, or
        the files it added to a folder that existed."""
        if has_backup(self.path):
            return
        if self.created:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        for name in self._added:
            target = os.path.join(self.path, name)
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                _unlink(target)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_writable(path, cfg: dict, restart=False, force=False) -> str:
    """Raise RunDirError unless ``fit`` may write ``path``; return what it holds."""
    kind = status(path)
    if kind == "finished" and not restart:
        raise RunDirError(f"{path} already holds a finished run; choose another --out, or "
                          "--restart to train it again (nothing is overwritten)")
    if kind == "foreign" and not force:
        what = "a file" if not os.path.isdir(path) else "a folder that is not a run"
        raise RunDirError(f"{path} is {what}; choose another --out, or --force to write "
                          "the run into it")
    if kind == "foreign" and not os.path.isdir(path):
        raise RunDirError(f"{path} is a file; a run is a folder")
    if kind == "foreign":  # --force: write beside the folder's files, never over them
        for name in (STATE_FILE, CONFIG_FILE, MODEL_FILE, METRICS_FILE,
                     os.path.join(BACKUP_DIR, "state.json")):
            if os.path.lexists(os.path.join(path, name)):
                raise RunDirError(f"{os.path.join(path, name)} is not a keras-hashing run's "
                                  "and a run would replace it; move it or choose another "
                                  "--out")
    if kind == "training" and not restart and has_backup(path):
        changed = config_differences(path, cfg)
        if changed:
            raise RunDirError(f"{path} holds an interrupted run started with other settings "
                              f"({', '.join(changed)}); rerun with its settings to resume, "
                              "or --restart to start it over")
    return kind


def save_run(path, model, cfg: dict, metrics: dict) -> None:
    """Write model.keras, config.yaml and metrics.json, each atomically."""
    import numpy as np

    from keras_hashing.fileio import atomic_path

    for weight in model.weights:
        if not np.all(np.isfinite(np.asarray(weight))):
            raise RunDirError(f"the model's {weight.path} holds NaN or infinite values; the "
                              "run is not saved (lower the learning rate)")
    with atomic_path(os.path.join(path, MODEL_FILE), suffix=".keras") as tmp:
        model.save(tmp)
    write_text(os.path.join(path, CONFIG_FILE), dump(cfg))
    write_json(os.path.join(path, METRICS_FILE), metrics)


def remove_backup(path) -> None:
    """Remove the backup's own files (checkpoints, state), then the folder if empty;
    anything else found there is left alone."""
    backup = os.path.join(path, BACKUP_DIR)
    if not os.path.isdir(backup):
        return
    for name in os.listdir(backup):
        if name == "state.json" or (name.startswith("ckpt-") and name.endswith(".weights.h5")) \
                or (name.startswith(".") and ".tmp" in name):
            _unlink(os.path.join(backup, name))
    features = os.path.join(backup, FEATURES_DIR)
    if os.path.isdir(features):
        for name in os.listdir(features):
            if re.fullmatch(r"(train|val)-[0-9a-f]+\.npy|\..*\.tmp.*", name):
                _unlink(os.path.join(features, name))
        _rmdir_if_empty(features)
    _rmdir_if_empty(backup)


def _rmdir_if_empty(folder) -> None:
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _remove_run_files(path) -> None:
    """A restart: the run's own outputs go; plots, a user's notes and anything else
    stay. Under logs/ a finished run removes the files it recorded as its own; an
    interrupted one every file but those recorded as the user's when it started."""
    for name in (MODEL_FILE, METRICS_FILE):
        _unlink(os.path.join(path, name))
    remove_backup(path)
    own = _recorded(path, "own_files", None)
    if own is None:  # interrupted: what its processes wrote, nothing a user added since
        keep = set(_recorded(path, "user_files"))
        writers = _recorded(path, "writers", None)
        own = [f for f in _files_under(path, LOGS_DIR) if f not in keep and (
            writers is None or _written_by_run(f, writers))]
    for name in own:
        _unlink(os.path.join(path, name))
    _prune_empty_folders(os.path.join(path, LOGS_DIR))


def _written_by_run(relpath, writers) -> bool:
    """Whether the file at ``relpath`` (under logs/) is one a run whose processes are
    ``writers`` ("host:pid") wrote: an event file of one of them, or a projector file."""
    parts = relpath.split(os.sep)
    name = parts[-1]
    event = _EVENT_FILE.match(name)
    if event:
        return f"{event['host']}:{event['pid']}" in writers
    return parts[:-1] == [LOGS_DIR, "hashing"] and bool(_PROJECTOR_FILES.match(name))


def _files_under(path, folder) -> list:
    """Files under ``path/folder``, as sorted paths relative to ``path``."""
    found = []
    for root, _, names in os.walk(os.path.join(path, folder)):
        found += [os.path.relpath(os.path.join(root, n), path) for n in names]
    return sorted(found)


def _recorded(path, key, default=()):
    """A list that run.json records (``user_files``, ``own_files``), or ``default``."""
    try:
        value = read_json(os.path.join(path, STATE_FILE)).get(key, default)
    except Exception:  # noqa: BLE001 - no state file, or an unreadable one: nothing recorded
        return list(default) if default is not None else None
    if not isinstance(value, list):  # None (never recorded), or not ours to trust
        return None if value is None or default is None else list(default)
    # only paths inside the run: a hand-edited run.json cannot aim a restart elsewhere
    return [v for v in value if isinstance(v, str) and not os.path.isabs(v)
            and ".." not in v.split(os.sep)]


def _prune_empty_folders(top) -> None:
    for root, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(root)  # only an empty folder goes
        except OSError:
            pass


def _is_orphan(name) -> bool:
    """A temporary file of an atomic write of a run file (fileio) left by a kill."""
    return any(re.fullmatch(rf"\.{re.escape(own)}\.\w+\.tmp(\.keras)?", name)
               for own in (STATE_FILE, CONFIG_FILE, MODEL_FILE, METRICS_FILE))


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _first_missing_ancestor(path):
    """The outermost folder of ``path`` that does not exist yet (None if it exists)."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def load_run(path, need_metrics=False) -> Run:
    """Read a finished run directory; a missing or unreadable file raises RunDirError
    naming it.

    Example:
        >>> run = load_run("runs/ssdh_digits_48b")        # doctest: +SKIP
        >>> run.model.bits, run.config["method"]          # doctest: +SKIP
        (48, 'ssdh')
    """
    import keras

    from keras_hashing.models.hub_backbones import hub_preset, import_keras_hub
    from keras_hashing.models.methods import get_method

    path = os.fspath(path)
    kind = status(path)
    if kind == "missing":
        raise RunDirError(f"run directory {path} does not exist; train one with "
                          "`keras-hashing fit --out DIR`")
    if kind == "training":
        raise RunDirError(f"{path} is not finished (training, or interrupted): rerun the "
                          "same `keras-hashing fit` command to resume it")
    model_path = os.path.join(path, MODEL_FILE)
    if kind != "finished" or not os.path.isfile(model_path):
        raise RunDirError(f"{path} has no {MODEL_FILE}; is it a finished keras-hashing run?")
    cfg = load_yaml(os.path.join(path, CONFIG_FILE))
    if any(hub_preset(cfg.get(key)) is not None for key in ("backbone", "features_from")):
        import_keras_hub()  # registers KerasHub's layers, which the model holds
    try:
        get_method(cfg.get("method", "ssdh"))  # registers the class before loading
        model = keras.saving.load_model(model_path)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        raise RunDirError(f"{model_path}: cannot load the model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    metrics_path = os.path.join(path, METRICS_FILE)
    metrics = read_json(metrics_path) if (need_metrics or os.path.exists(metrics_path)) else {}
    if not isinstance(metrics, dict):
        raise RunDirError(f"{metrics_path}: not a metrics mapping")
    return Run(path, model, cfg, metrics)


def model_digest(path) -> str:
    """sha256 of a run's model.keras: which model made an index's codes."""
    digest = hashlib.sha256()
    try:
        with open_regular(os.path.join(path, MODEL_FILE), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise RunDirError(f"{path}: cannot read {MODEL_FILE} ({e.strerror})") from None
    return digest.hexdigest()


def check_code_length(model, bits: int, what: str) -> None:
    """Raise CodeLengthError when a model's codes do not match ``bits`` of ``what``."""
    from keras_hashing.codes import code_bytes
    from keras_hashing.errors import CodeLengthError

    if model.bits != bits:
        raise CodeLengthError(f"the model makes {model.bits}-bit codes ({code_bytes(model.bits)}"
                              f" bytes) but {what} holds {bits}-bit codes; use the run that "
                              "built it")


def check_index_matches_run(run: Run, index, what: str) -> None:
    """Raise unless ``index`` holds codes of ``run``'s model: same length, and, where the
    index records them, the same model file (or at least the same method)."""
    check_code_length(run.model, index.bits, what)
    meta = index.metadata
    recorded = meta.get("model_sha256")
    other = (recorded and recorded != model_digest(run.path)) or (
        not recorded and meta.get("method") and meta["method"] != run.model.method_name)
    if other:
        raise RunDirError(f"{what} was built by another model ({meta.get('method', '?')} of "
                          f"{meta.get('run', 'an unknown run')}), not by {run.path}; its "
                          "codes are not comparable: search it with the run that built it, "
                          f"or rebuild it with `keras-hashing index build --run {run.path}`")


def load_run_with_splits(path, dataset=None, data_dir=None, protocol=None):
    """(Run, splits of its dataset), or of ``dataset`` instead; the images must have the
    shape the model takes. ``protocol``: the run's dataset split by another protocol that
    trains on the same images (fmnist-unseen's model judged by fmnist-unseen-all), so
    one trained model is scored under both without training twice."""
    from keras_hashing.errors import DataError

    run = load_run(path)
    cfg = dict(run.config)
    if dataset:
        cfg["dataset"], cfg["protocol"] = dataset, None
    if data_dir:
        cfg["data_dir"] = data_dir
    if protocol:
        cfg["protocol"] = protocol
    splits = load_splits(cfg)
    if splits.input_shape != run.model.image_shape:
        raise DataError(f"dataset {cfg['dataset']} has images of shape {splits.input_shape} "
                        f"but the model expects {run.model.image_shape}")
    if protocol and protocol != run.config.get("protocol"):
        check_same_training(run, splits, protocol)
    elif not dataset:  # the run's own data: it must still split as it did
        check_splits(run, splits)
    return run, splits


def check_same_training(run: Run, splits, protocol) -> None:
    """Raise DataError unless ``splits`` (the run's dataset under ``protocol``) train and
    validate on exactly the images the run did: otherwise its queries or database could
    hold images it trained on, and its scores would not be the protocol's."""
    from keras_hashing.errors import DataError

    recorded = run.metrics.get("split_digests") or {}
    if not all(name in recorded for name in ("train", "val")):
        raise DataError(f"{run.path} does not record its training split (trained before "
                        "runs did), so it cannot be checked against the "
                        f"{protocol} protocol; train a run with --protocol {protocol}")
    name = first_changed_split(run, splits, ("train", "val"))
    if name:
        verb = "trains" if name == "train" else "validates"
        raise DataError(
            f"the {protocol} protocol {verb} on other images than {run.path} "
            f"(protocol {run.config.get('protocol')}) did, so the run cannot be scored "
            f"under it; train a run with --protocol {protocol}")


def check_splits(run: Run, splits) -> None:
    """Raise DataError when ``splits`` differ from those ``run`` recorded when it trained
    (images added, removed or moved between classes re-split a folder: training images
    would become queries); runs from before the record pass."""
    from keras_hashing.data.splits import SPLIT_NAMES
    from keras_hashing.errors import DataError

    name = first_changed_split(run, splits, SPLIT_NAMES)
    if name:
        then = run.metrics.get(f"num_{name}")
        raise DataError(
            f"the images of {run.config['dataset']} changed since {run.path} was trained: "
            f"its {name} split differs ({len(splits.split(name))} images now, {then} "
            "then), so the run's splits cannot be rebuilt; restore the files as they "
            "were, or train a new run on the new ones")


def first_changed_split(run: Run, splits, names):
    """The first of ``names`` whose images or labels in ``splits`` differ from what the
    run recorded when it trained (splits it did not record are not compared), or None."""
    from keras_hashing.data.splits import split_digest

    recorded = run.metrics.get("split_digests") or {}
    return next((name for name in names
                 if name in recorded and recorded[name] != split_digest(splits.split(name))),
                None)


def metric_rows(paths, metric="map_all") -> list:
    """One {"method", "bits", metric} row per finished run (for mAP against bits); runs
    of different datasets or protocols cannot share a plot and raise RunDirError."""
    rows, data = [], {}
    for path in paths:
        metrics = read_json(os.path.join(path, METRICS_FILE))
        try:
            rows.append({"method": metrics["method"], "bits": int(metrics["bits"]),
                         metric: float(metrics["query"][metric])})
        except (KeyError, TypeError, ValueError):
            raise RunDirError(f"{path}/{METRICS_FILE} lacks method, bits or query "
                              f"{metric}") from None
        dataset, protocol = metrics.get("dataset"), metrics.get("protocol")
        name = f"{dataset}" + (f" ({protocol})" if protocol and protocol != dataset else "")
        data.setdefault(name, []).append(os.fspath(path))
    if len(data) > 1:
        groups = "; ".join(f"{name}: {', '.join(p)}" for name, p in data.items())
        raise RunDirError(f"the runs were trained on different data ({groups}); their mAP "
                          "is not comparable: plot each group separately")
    return rows


def load_splits(cfg: dict):
    """The splits (``data.datasets.DatasetSplits``) a resolved config trains and
    evaluates on."""
    from keras_hashing.data.datasets import load_dataset

    return load_dataset(cfg["dataset"], protocol=cfg["protocol"], data_dir=cfg["data_dir"],
                        seed=cfg["seed"], image_size=resolved_image_size(cfg),
                        channels=cfg["channels"], download=cfg.get("download", True),
                        on_bad_image=cfg.get("on_bad_image", "fail"),
                        unseen_fold=cfg.get("unseen_fold"),
                        validation=cfg.get("validation",
                                           SETTINGS_BEFORE_ADDED["validation"]))


def resolved_image_size(cfg: dict):
    """cfg's image_size; for image files under an ImageNet backbone, 224 x 224."""
    from keras_hashing.data.image_files import source_kind
    from keras_hashing.models.backbones import application_name

    if cfg["image_size"] or not application_name(cfg["backbone"]):
        return cfg["image_size"]
    return [224, 224] if source_kind(cfg["dataset"]) else None
