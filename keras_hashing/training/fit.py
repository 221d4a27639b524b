"""Fit a run and evaluate it; the run directory itself is ``keras_hashing.training.runs``.

Example:
    >>> from keras_hashing.training.config import resolve_config
    >>> cfg = resolve_config(overrides={"epochs": 1, "bits": 16})
    >>> run = fit(cfg, out="/tmp/kh-doctest-run", verbose=0)   # doctest: +SKIP
    >>> run.metrics["query"]["map_all"] > 0.1                  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import keras
import numpy as np

from keras_hashing import __version__

from keras_hashing.training import custom_loop

from keras_hashing import evaluation
from keras_hashing.data.splits import SPLIT_NAMES, DatasetSplits, split_digest
from keras_hashing.data.datasets import flat_pixels
from keras_hashing.data.pipeline import make_tf_dataset
from keras_hashing.training.config import load_splits
from keras_hashing.training.optimizers import l2_weight_decay, make_optimizer
from keras_hashing.errors import ConfigError, RunDirError
from keras_hashing.models.devices import accelerator_visible
from keras_hashing.models.methods import get_method
from keras_hashing.training.runs import (BACKUP_DIR, LOGS_DIR, Run, RunWriter, check_writable,
                                         default_run_dir, load_run,
                                         load_run_with_splits)


def build_model(cfg: dict, splits: DatasetSplits, mixed_precision=None):
    """The method's model for ``splits``; pretrained weights loaded, and with
    ``mixed_precision`` (default: cfg's, on a GPU only) a mixed_float16 policy."""
    policy = keras.mixed_precision.global_policy()
    if mixed_precision is None:
        mixed_precision = use_mixed_precision(cfg)
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _build_model(cfg, splits)
    finally:  # the layers keep their policy; nothing else built later inherits it
        keras.mixed_precision.set_global_policy(policy)
    if cfg["weights"]:
        from keras_hashing.models.backbones import load_pretrained

        load_pretrained(model.backbone, model.backbone_spec, cfg["weights"],
                        model.backbone_kwargs.get("feature_layer", "pooled"))
    return model


def use_mixed_precision(cfg: dict) -> bool:
    """cfg's mixed_precision where a GPU is visible; on CPU it stays off (float16 math
    there is emulated and slower), with a warning."""
    if not cfg["mixed_precision"]:
        return False
    if accelerator_visible():
        return True
    from keras_hashing.data.images import warn

    warn("mixed_precision is for GPUs; no GPU is visible, so training stays in float32")
    return False


def _build_model(cfg: dict, splits: DatasetSplits):
    cls = get_method(cfg["method"])
    params = cls.data_params(dict(cfg["params"]), splits)
    # a closed-form baseline may hash another run's features: training loads that run and
    # hands its model over (models never load runs themselves)
    source = load_run(cfg["features_from"]).model if cfg.get("features_from") else None
    backbone, backbone_kwargs = cls.backbone_for(cfg, splits, source)
    model = cls(bits=cfg["bits"], input_shape=splits.input_shape,
                num_classes=splits.num_classes, multi_label=splits.multi_label,
                backbone=backbone, backbone_kwargs=backbone_kwargs,
                weight_decay=l2_weight_decay(cfg), params=params)
    if source is not None:
        # Same architecture, so the trained weights copy over one for one; the file of
        # this run then holds them, and loading it never needs the source run again.
        model.backbone.set_weights(source.backbone.get_weights())
    return model


def make_strategy(cfg: dict):
    """The tf.distribute strategy of ``cfg["strategy"]`` (after splitting the CPU into
    ``cfg["logical_cpus"]`` devices, which must happen before TensorFlow starts).

    auto: MirroredStrategy when more than one GPU (or logical CPU) is visible, else the
    default; mirrored: over the GPUs, or the logical CPUs when there are none;
    multiworker: MultiWorkerMirroredStrategy over the TF_CONFIG cluster, trained by
    ``custom_loop.fit_in_custom_loop``.
    """
    import tensorflow as tf

    kind = cfg["strategy"]
    if kind == "multiworker":
        check_tf_config()
        # The cluster comes from TF_CONFIG (without it: one local worker). Keras' fit
        # does not run under this strategy; training.fit uses custom_loop instead.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cfg["logical_cpus"]:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cfg["logical_cpus"])
        except RuntimeError:  # already initialised in this process: keep what it has
            pass
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    devices = [d.name for d in gpus] or ([d.name for d in cpus] if len(cpus) > 1 else None)
    if kind == "mirrored" or (kind == "auto" and devices and len(devices) > 1):
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def check_tf_config() -> None:
    """Raise ConfigError unless TF_CONFIG (if set) describes a cluster and this task."""
    import json

    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return
    try:
        tf_config = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e})") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not (isinstance(cluster, dict) and all(
            isinstance(v, list) and all(isinstance(a, str) for a in v)
            for v in cluster.values())):
        raise ConfigError('TF_CONFIG needs "cluster": {"worker": ["host:port", ...]}')
    if not (isinstance(task, dict) and task.get("type") in cluster and
            isinstance(task.get("index"), int) and not isinstance(task["index"], bool) and
            0 <= task["index"] < len(cluster[task["type"]])):
        raise ConfigError('TF_CONFIG needs "task": {"type": "worker", "index": I} naming one '
                          "of its cluster's tasks")


def jit_compile_default():
    """XLA off on CPU, Keras' "auto" where a GPU is visible (``models.devices``)."""
    return "auto" if accelerator_visible() else False


def fit(cfg: dict, out=None, verbose="auto", splits=None, restart=False,
        force=False) -> Run:
    """Train the method of ``cfg`` (a resolved config), evaluate it, write the run directory.

    The run directory is written as a transaction (``keras_hashing.training.runs``): rerunning the
    same call after a kill resumes it. ``restart`` starts an interrupted or finished run
    in ``out`` over; ``force`` writes into a folder that is not a run.
    """
    strategy = make_strategy(cfg)
    out = out or default_run_dir(cfg)
    # Under multiworker only the chief writes `out`; the others log to a scratch folder.
    chief = custom_loop.is_chief(strategy)
    if chief:
        check_writable(out, cfg, restart, force)  # before minutes of data loading
    keras.utils.set_random_seed(cfg["seed"])
    splits = splits or load_splits(cfg)
    with strategy.scope():
        model = build_model(cfg, splits)
    if chief:
        with RunWriter(out, cfg, restart=restart, force=force) as writer:
            try:
                return _with_data_errors(_train_and_save, cfg, writer, out, strategy, model,
                                         splits, verbose)
            except BaseException:
                # A run that fails before its first epoch is saved (a bad image in a
                # streamed collection) leaves nothing behind; one with a backup stays
                # resumable.
                writer.discard()
                raise
    work = tempfile.mkdtemp(prefix="keras-hashing-worker-")
    try:
        return _with_data_errors(_train_and_save, cfg, None, work, strategy, model, splits,
                                 verbose, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _with_data_errors(fn, *args):
    """Call fn; a bad image met inside a tf.data pipeline becomes a one-line DataError."""
    import tensorflow as tf

    from keras_hashing.data.images import bad_image_error

    try:
        return fn(*args)
    except tf.errors.OpError as e:
        error = bad_image_error(e)
        if error is None:
            raise
        raise error from None


def _train_and_save(cfg, writer, work, strategy, model, splits, verbose, out=None) -> Run:
    """fit's training, evaluation and (on the chief, which has a RunWriter) the run files;
    ``work`` is where logs go (the run, or a worker's scratch folder)."""
    from keras_hashing.training.callbacks import RetrievalValidation, TrainingBackup

    chief = writer is not None
    out = writer.path if chief else out
    steps = cfg["steps_per_epoch"] or -(-len(splits.train) // cfg["batch_size"])
    with strategy.scope():
        model.compile(optimizer=make_optimizer(cfg, steps, model.backbone.trainable_variables),
                      jit_compile=jit_compile_default())
    rng = np.random.default_rng(cfg["seed"])
    db_idx = np.sort(rng.permutation(len(splits.train))[:cfg["val_database_size"]])
    # validation "none": the last epoch is kept and val only monitors the fit
    validation = RetrievalValidation(splits.val, splits.train.subset(db_idx), cfg["bits"],
                                     map_k=protocol_k(splits.protocol, len(db_idx)),
                                     restore_best=splits.validation != "none")
    recalibration = batchnorm_callback(cfg, splits) if cfg["recalibrate_batchnorm"] else None
    # Workers other than the chief resume from the chief's backup (a shared --out) and
    # never write it.
    backup = TrainingBackup(os.path.join(out, BACKUP_DIR), validation, write=chief,
                            recalibration=recalibration)
    backup.set_model(model)
    initial_epoch = backup.restore()
    multi_worker = custom_loop.multi_worker(strategy)
    if multi_worker:
        low, high = custom_loop.agree(strategy, initial_epoch)
        if low != high:
            raise RunDirError(f"the workers would resume from epochs {low} to {high}: give "
                              f"every worker the chief's run directory (a shared {out}) or "
                              "delete its backup folder to start over")
    callbacks = _callbacks(cfg, model, splits, os.path.join(work, LOGS_DIR), validation, backup,
                           recalibration)
    if initial_epoch and verbose:
        print(f"resuming {out} from its backup after epoch {initial_epoch}")
    start = time.time()
    if not initial_epoch:  # a resumed run has its state (BDNN's B table) in the backup
        model.before_fit(splits, seed=cfg["seed"])
    if backup.training_done:
        # Killed after training ended (during evaluation or the save): the backup holds
        # the final state, early stopping included; only the best epoch is to restore.
        validation.set_model(model)
        validation.on_train_end()
    elif model.gradient_training:
        _fit_gradients(cfg, model, splits, strategy, steps, callbacks, initial_epoch, verbose)
    after_fit = model.after_fit(splits, seed=cfg["seed"])
    if not model.gradient_training:  # closed form: one validation measurement
        validation.set_model(model)
        validation.on_epoch_end(0)
    seconds_here = time.time() - start
    metrics = _run_metrics(cfg, model, splits, strategy, validation, after_fit,
                           initial_epoch, seconds_here, backup.seconds_before)
    # every epoch of the run, those before a resume too (the backup carries them)
    metrics["batchnorm_recalibrated_epochs"] = (list(recalibration.recalibrated_epochs)
                                                if recalibration else [])
    if chief:
        writer.finish(model, metrics)
    return Run(out, model, cfg, metrics)


def _run_metrics(cfg, model, splits, strategy, validation, after_fit, initial_epoch,
                 seconds_here, seconds_before) -> dict:
    """metrics.json: the query evaluation, the validation history, timings, strategy."""
    # A resumed run counts the epochs trained before the resume too; None where the
    # backup predates recording its time.
    train_seconds = None if seconds_before is None else seconds_here + seconds_before
    multi_worker = custom_loop.multi_worker(strategy)
    return {
        "method": cfg["method"], "bits": cfg["bits"], "keras_hashing_version": __version__,
        **splits.summary(),
        # what later commands check before they re-split the data (runs.check_splits)
        "split_digests": {name: split_digest(splits.split(name)) for name in SPLIT_NAMES},
        "query": evaluate_model(model, splits),
        "validation": {"setting": splits.validation,
                       "kept": "best" if validation.restore_best else "last",
                       "best_epoch": validation.best_epoch, "best_map_all": validation.best_map,
                       "map_all_per_epoch": validation.history,
                       "collapsed_epochs": validation.collapsed_epochs},
        "epochs_run": len(validation.history),
        "resumed_from_epoch": initial_epoch or None,
        **({"after_fit": after_fit} if after_fit else {}),
        "train_seconds": None if train_seconds is None else round(train_seconds, 2),
        "train_seconds_this_process": round(seconds_here, 2),
        "strategy": {"kind": ("MultiWorkerMirroredStrategy" if multi_worker  # an alias
                              else type(strategy).__name__),
                     "replicas": int(strategy.num_replicas_in_sync)},
    }


def batchnorm_callback(cfg, splits):
    """The epoch-end BatchNormalization recalibration of cfg's ``recalibrate_batchnorm``,
    on un-augmented training batches."""
    from keras_hashing.training.batchnorm import RecalibrateBatchNorm

    steps = cfg["steps_per_epoch"] or -(-len(splits.train) // cfg["batch_size"])

    def batches():  # shuffled: a folder's files come sorted by class
        return (images for images, _ in make_tf_dataset(
            splits.train, cfg["batch_size"], shuffle=True, seed=cfg["seed"], cache=False))

    return RecalibrateBatchNorm(batches, steps, always=cfg["recalibrate_batchnorm"] is True)


def _callbacks(cfg, model, splits, logs, validation, backup, recalibration=None) -> list:
    """fit's callbacks, in the order they must run."""
    from keras_hashing.training.callbacks import BackboneWarmup, HashingTensorBoard, StopOnNonFinite

    # Order matters: validation adds val_map to the logs the others read; the backup
    # comes after validation, so it saves the updated selection state, and after the
    # TensorBoard writers, so an epoch it records has its scalars on disk (a resume does
    # not write them again).
    callbacks = [validation, keras.callbacks.TensorBoard(logs, histogram_freq=0),
                 HashingTensorBoard(logs, splits.val, splits.class_names,
                                    max_samples=cfg["tensorboard_samples"]), backup]
    if recalibration is not None:  # before validation, which infers with the statistics
        callbacks.insert(0, recalibration)
    if cfg["backbone_warmup_epochs"]:
        callbacks.insert(0, BackboneWarmup(cfg["backbone_warmup_epochs"]))
    if cfg["patience"]:
        callbacks.append(keras.callbacks.EarlyStopping("val_map", patience=cfg["patience"],
                                                       mode="max"))
    # The method's own callbacks (BDNN's B step) run first, so the backup saves their
    # state; the divergence check before all, so no epoch end backs up NaN weights.
    return [StopOnNonFinite()] + model.training_callbacks(splits) + callbacks


def _fit_gradients(cfg, model, splits, strategy, steps, callbacks, initial_epoch, verbose):
    """Gradient training: Keras' fit, or the custom loop under multi-worker."""
    multi_worker = custom_loop.multi_worker(strategy)
    train = make_tf_dataset(splits.train, cfg["batch_size"], shuffle=True, seed=cfg["seed"],
                            with_index=model.needs_index, augmentation=cfg["augmentation"],
                            # every worker must take the same number of full global steps
                            drop_remainder=multi_worker,
                            # a resumed run takes up the data order where it stopped
                            first_epoch=initial_epoch)
    if multi_worker:
        custom_loop.fit_in_custom_loop(model, train, strategy, cfg["epochs"],
                                       initial_epoch=initial_epoch, callbacks=callbacks,
                                       verbose=verbose)
        return
    fit_steps = None
    if cfg["steps_per_epoch"] or not splits.train.in_memory:
        # A streamed split's length is unknown to tf.data (unreadable images may be
        # skipped): repeat it and cut epochs by steps, so Keras never runs out of data.
        train, fit_steps = train.repeat(), steps
    model.fit(
        train,
        # Keras' evaluate fails on an uneven last batch under MirroredStrategy (TF 2.21:
        # an AddN over the per-replica inputs; pass validation_data under every strategy
        # once a TF release evaluates uneven batches); RetrievalValidation, which selects the
        # epoch, uses predict, which works. So the validation loss is single-device only.
        # A streamed validation split is scored by RetrievalValidation alone (its
        # length is unknown to Keras' evaluate loop).
        validation_data=(make_tf_dataset(splits.val, max(256, cfg["batch_size"]))
                         if strategy.num_replicas_in_sync == 1 and splits.val.in_memory
                         else None),
        epochs=cfg["epochs"], initial_epoch=initial_epoch, callbacks=callbacks,
        verbose=verbose, shuffle=False, steps_per_epoch=fit_steps)


def collapse_report(splits: dict) -> dict:
    """``evaluation.collapse_check`` of each named split's (bits, labels), with one warning
    line per collapsed split; ``collapsed`` is True when any is."""
    from keras_hashing.data.images import warn

    report = {}
    for name, (bits, labels) in splits.items():
        check = evaluation.collapse_check(bits, labels)
        if check["collapsed"]:
            warn(f"{name}: {check['message']}")
        report[name] = check
    report["collapsed"] = any(check["collapsed"] for check in report.values())
    return report


def protocol_k(protocol, num_database: int) -> int:
    """The k of the protocol's mAP@k (``data.benchmarks.PROTOCOL_K``): the database size
    for an mAP@all protocol, 1000 for a protocol that names none."""
    from keras_hashing.data.benchmarks import PROTOCOL_K

    if protocol in PROTOCOL_K:
        k = PROTOCOL_K[protocol]
        return num_database if k is None else k
    return 1000


PRECISION_KS = (1, 10, 50, 100, 200, 500, 1000)
# Euclidean ground truth of unsupervised methods: the nearest pixel-space neighbours, 1,000
# or 2% of the database if fewer (the BDNN code leaves K unstated; 1,000 is 1.7% of the
# Fashion-MNIST database, 2% of digits' is 29).
EUCLIDEAN_K = 1000
EUCLIDEAN_FRACTION = 0.02


def evaluate(run_path, dataset=None, data_dir=None, verbose=0, protocol=None) -> dict:
    """The retrieval metrics of the run at ``run_path`` on its own splits (``dataset``
    and ``data_dir`` point at a moved copy of its data; ``protocol``: another protocol
    with the same training split); as ``evaluate_model``.

    Example:
        >>> evaluate("runs/d32")["map_all"]                          # doctest: +SKIP
        0.93
        >>> evaluate("runs/unseen48", protocol="fmnist-unseen-all")["map_all"]  # doctest: +SKIP
        0.41
    """
    run, splits = load_run_with_splits(run_path, dataset, data_dir, protocol)
    return evaluate_model(run.model, splits, verbose=verbose)


def evaluate_model(model, splits: DatasetSplits, precision_ks=PRECISION_KS,
                   verbose=0) -> dict:
    """Query-vs-database retrieval metrics, the PR curve over Hamming radii, and code
    statistics of the database."""
    from keras_hashing.codes import pack_bits
    from keras_hashing.encoders import readable

    # One forward pass per split gives both the bits and the continuous codes (ablations).
    # A streamed split is encoded batch by batch from disk; images that could not be read
    # (on_bad_image: skip) are left out of the queries and the database.
    query_out, query_kept = readable(model.predict_arrays(splits.query, verbose=verbose))
    db_out, db_kept = readable(model.predict_arrays(splits.database, verbose=verbose))
    query_y, db_y = splits.query.y[query_kept], splits.database.y[db_kept]
    db_bits = np.asarray(db_out["bits"], np.uint8)
    query_codes, db_codes = pack_bits(np.asarray(query_out["bits"], np.uint8)), pack_bits(db_bits)
    # the protocol's own mAP@k beside mAP@all and @1000 (CIFAR-10: the whole database;
    # NUS-WIDE and COCO: 5000; others: 1000)
    k = protocol_k(splits.protocol, len(db_codes))
    metrics = evaluation.retrieval_metrics(
        query_codes, db_codes, query_y, db_y, model.bits,
        map_at=tuple(dict.fromkeys((None, 1000, k))), radius=2, precision_ks=precision_ks,
        pr_curve=True)
    metrics["map_at_k"], metrics["k"] = metrics[f"map_{k}"], k
    metrics["pr_curve"] = {key: [round(float(v), 5) for v in values]
                           for key, values in metrics["pr_curve"].items()}
    # the query keeps its real-valued code, the database its bits: the asymmetric ranking
    # that re-ranking (HammingIndex.search(rerank=...)) approaches
    signed = np.asarray(model.signed_code(np.asarray(query_out["code"], np.float32)))
    metrics.update(evaluation.asymmetric_map(signed, db_codes,
                                             query_y, db_y, model.bits,
                                             map_at=tuple(dict.fromkeys((None, 1000, k)))))
    metrics["map_at_k_asym"] = metrics[f"map_{k}_asym"]
    metrics["code_stats"] = evaluation.code_statistics(db_bits)
    metrics["collapse"] = collapse_report(
        {"query": (np.asarray(query_out["bits"], np.uint8), query_y), "database": (db_bits, db_y)})
    metrics["class_spread"] = evaluation.class_distance_spread(query_codes, query_y, model.bits)
    ablations = model.query_ablations()
    if ablations:
        metrics["ablations"] = {}
        for name, binarize in ablations.items():
            scores = evaluation.retrieval_metrics(
                pack_bits(binarize(query_out)), pack_bits(binarize(db_out)), query_y, db_y,
                model.bits, map_at=(None, 1000), radius=None)
            metrics["ablations"][name] = {"map_all": scores["map_all"],
                                          "map_1000": scores["map_1000"]}
    if not model.supervised and splits.query.in_memory and splits.database.in_memory:
        # Unsupervised codes are judged on what they were built for as well: keeping the
        # Euclidean neighbours of the pixels (the UH-BDNN / ITQ protocol).
        k = max(1, min(EUCLIDEAN_K, round(EUCLIDEAN_FRACTION * len(db_codes))))
        neighbours = evaluation.euclidean_neighbours(
            flat_pixels(splits.query.x), flat_pixels(splits.database.x), k=k)
        euclid = evaluation.retrieval_metrics(
            query_codes, db_codes, None, None, model.bits, map_at=(None, 1000), radius=2,
            relevance_fn=evaluation.neighbour_relevance(neighbours, len(db_codes)))
        metrics.update({"map_all_euclidean": euclid["map_all"],
                        "map_1000_euclidean": euclid["map_1000"],
                        "p_r2_euclidean": euclid["p_r2"], "euclidean_k": k})
    return metrics
