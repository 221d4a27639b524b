"""Fit a run and evaluate it; the run directory itself is ``keras_hashing.runs``.

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
from keras_hashing.data.benchmarks import protocol_k
from keras_hashing.data.pipeline import make_tf_dataset
from keras_hashing.data.splits import SPLIT_NAMES, DatasetSplits, split_digest
from keras_hashing.errors import RunDirError
from keras_hashing.models.backbones import load_pretrained, pretrained_weights
from keras_hashing.models.devices import accelerator_visible
from keras_hashing.models.methods import get_method
from keras_hashing.runs import (BACKUP_DIR, LOGS_DIR, Run, RunWriter, check_writable,
                                default_run_dir, load_run, load_splits)
from keras_hashing.scoring import evaluate_model
from keras_hashing.training import custom_loop, feature_cache
from keras_hashing.training.batchnorm import recalibration_callback
from keras_hashing.training.optimizers import l2_weight_decay, make_optimizer
from keras_hashing.training.strategy import jit_compile_default, make_strategy


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
    # a closed-form baseline over a pretrained backbone (--features-from hub:PRESET) hashes
    # that backbone's trained features: the training-free baseline
    weights = cfg["weights"] or pretrained_weights(cfg.get("features_from"))
    if weights:
        load_pretrained(model.backbone, model.backbone_spec, weights,
                        model.backbone_kwargs.get("feature_layer", "pooled"))
    if cfg.get("freeze_backbone"):
        model.backbone.trainable = False  # a feature extractor for the whole run
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
    source = None
    if cfg.get("features_from") and not pretrained_weights(cfg["features_from"]):
        source = load_run(cfg["features_from"]).model
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


def fit(cfg: dict, out=None, verbose="auto", splits=None, restart=False,
        force=False) -> Run:
    """Train the method of ``cfg`` (a resolved config), evaluate it, write the run directory.

    The run directory is written as a transaction (``keras_hashing.runs``): rerunning the
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
    validation = RetrievalValidation(splits.val, splits.train.subset(db_idx),
                                     cfg["bits"], map_k=protocol_k(splits.protocol, len(db_idx)),
                                     restore_best=splits.validation != "none")
    recalibration = (recalibration_callback(cfg, splits) if cfg["recalibrate_batchnorm"]
                     else None)
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
        # a frozen backbone's stored features stand in for the images while it is frozen
        phases = feature_cache.fit_phases(cfg, model, splits, initial_epoch,
                                          os.path.join(work, BACKUP_DIR))
        _fit_gradients(cfg, model, phases, strategy, steps, callbacks, initial_epoch, verbose,
                       db_idx)
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


def _fit_gradients(cfg, model, phases, strategy, steps, callbacks, initial_epoch, verbose,
                   db_idx):
    """Gradient training: Keras' fit, or the custom loop under multi-worker, phase by
    phase (``feature_cache.fit_phases``: the epochs on stored features, then on images);
    the callbacks see one training run across the phases (``PhasedCallback``)."""
    from keras_hashing.training.callbacks import PhasedCallback

    multi_worker = custom_loop.multi_worker(strategy)
    start = initial_epoch
    try:
        for number, phase in enumerate(phases):
            _enter_phase(model, phase, callbacks, db_idx)
            phased = callbacks if len(phases) == 1 else [
                PhasedCallback(c, first=number == 0, last=number == len(phases) - 1)
                for c in callbacks]
            train = make_tf_dataset(phase.train, cfg["batch_size"], shuffle=True,
                                    seed=cfg["seed"], with_index=model.needs_index,
                                    augmentation=cfg["augmentation"],
                                    # every worker must take the same number of full steps
                                    drop_remainder=multi_worker,
                                    # a resumed run takes up the data order where it stopped
                                    first_epoch=start)
            _run_fit(cfg, model, phase, train, strategy, steps, phased, start, verbose)
            if model.stop_training and number < len(phases) - 1:
                # early stopping within the cached epochs ends the run there
                for callback in phased:
                    callback.callback.on_train_end()
                break
            start = phase.end
    finally:
        model.trains_on_features = False  # every later call takes images


def _enter_phase(model, phase, callbacks, db_idx) -> None:
    """Point the model, validation and TensorBoard at the phase's inputs."""
    from keras_hashing.training.callbacks import HashingTensorBoard, RetrievalValidation

    model.trains_on_features = phase.on_features
    # the compiled steps captured the inputs they were traced for
    model.make_train_function(force=True)
    model.make_test_function(force=True)
    for callback in callbacks:
        if isinstance(callback, RetrievalValidation):
            callback.score_on(phase.val, phase.train.subset(db_idx),
                              feature_cache.encode_features if phase.on_features else None)
        elif isinstance(callback, HashingTensorBoard):
            callback.use_features(phase.val.x if phase.on_features else None)


def _run_fit(cfg, model, phase, train, strategy, steps, callbacks, initial_epoch, verbose):
    if custom_loop.multi_worker(strategy):
        custom_loop.fit_in_custom_loop(model, train, strategy, phase.end,
                                       initial_epoch=initial_epoch, callbacks=callbacks,
                                       verbose=verbose)
        return
    fit_steps = None
    if cfg["steps_per_epoch"] or not phase.train.in_memory:
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
        validation_data=(make_tf_dataset(phase.val, max(256, cfg["batch_size"]))
                         if strategy.num_replicas_in_sync == 1 and phase.val.in_memory
                         else None),
        epochs=phase.end, initial_epoch=initial_epoch, callbacks=callbacks,
        verbose=verbose, shuffle=False, steps_per_epoch=fit_steps)
