"""Keras callbacks for hashing runs: validation retrieval metrics and best-epoch selection."""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from tensorboard.plugins import projector

from keras_hashing.errors import RunDirError
from keras_hashing.codes import unpack_bits
from keras_hashing.data.images import warn
from keras_hashing.evaluation import code_statistics, collapse_check, retrieval_metrics
from keras_hashing.fileio import atomic_path, read_json, write_json, write_text
from keras_hashing.keras_internals import nested_layers


class RetrievalValidation(keras.callbacks.Callback):
    """Adds ``val_map`` (mAP@all) and ``val_p_r2`` to the epoch logs and keeps the best epoch.

    Queries are the validation split, the database is (a subsample of) the training split:
    model selection never touches the query set. Put this callback before TensorBoard and
    EarlyStopping in the list so they see the new keys. At the end of training the
    weights of the best epoch (highest ``val_map``) are restored; with ``restore_best``
    False the last epoch is kept, and ``best_epoch`` / ``best_map`` name it (the
    ``validation: none`` protocols, where val only monitors training images).

    Each epoch also checks both splits' codes for collapse (``evaluation.collapse_check``):
    the epochs where they collapsed are kept in ``collapsed_epochs``, and the first one
    prints one warning line.

    Args:
        queries: the validation split (``data.Split``, ``FileSplit``, ...).
        database: retrieval database for validation (a subset of the training split).
        bits: code length.
        restore_best: restore the best epoch's weights at the end.
        encode: ``(model, split) -> (packed codes, kept)``; default
            ``encoders.encode_split`` (images), ``feature_cache.encode_features`` for
            splits of cached features.
    """

    def __init__(self, queries, database, bits, restore_best=True, map_k=None, encode=None):
        super().__init__()
        self.queries, self.database = queries, database
        self.encode = encode
        self.bits = bits
        self.map_k = map_k  # the protocol's mAP@k, logged as val_map_at_k
        self.restore_best = restore_best
        self.best_map = -np.inf
        self.best_epoch = None
        self._best_weights = None
        self.history: list = []
        self.collapsed_epochs: list = []

    def score_on(self, queries, database, encode=None) -> None:
        """Score the coming epochs on these splits (the cached features' splits while the
        head trains on a cache, then the images'), keeping the selection so far."""
        self.queries, self.database, self.encode = queries, database, encode

    def on_epoch_end(self, epoch, logs=None):
        from keras_hashing.encoders import encode_split

        encode = self.encode or encode_split
        q_codes, q_kept = encode(self.model, self.queries)
        db_codes, db_kept = encode(self.model, self.database)
        metrics = retrieval_metrics(q_codes, db_codes, self.queries.y[q_kept],
                                    self.database.y[db_kept], self.bits,
                                    map_at=(None,) if self.map_k is None else (None, self.map_k),
                                    radius=2)
        if logs is not None:
            logs["val_map"] = metrics["map_all"]
            logs["val_p_r2"] = metrics["p_r2"]
            if self.map_k is not None:
                logs["val_map_at_k"] = metrics[f"map_{self.map_k}"]
        self.history.append(metrics["map_all"])
        self._check_collapse(epoch, (q_codes, self.queries.y[q_kept], "validation queries"),
                             (db_codes, self.database.y[db_kept], "validation database"))
        if metrics["map_all"] > self.best_map or not self.restore_best:
            self.best_map = metrics["map_all"]
            self.best_epoch = epoch + 1
            if self.restore_best:
                self._best_weights = self.model.get_weights()

    def _check_collapse(self, epoch, *splits) -> None:
        for codes, labels, name in splits:
            check = collapse_check(unpack_bits(codes, self.bits), labels)
            if check["collapsed"]:
                if not self.collapsed_epochs:
                    warn(f"epoch {epoch + 1}, {name}: {check['message']}")
                self.collapsed_epochs.append(epoch + 1)
                return

    def on_train_end(self, logs=None):
        if self.restore_best and self._best_weights is not None:
            self.model.set_weights(self._best_weights)

    def get_state(self) -> dict:
        """JSON-able selection state (for TrainingBackup)."""
        return {"best_map": None if self.best_epoch is None else float(self.best_map),
                "best_epoch": self.best_epoch, "history": list(self.history),
                "collapsed_epochs": list(self.collapsed_epochs)}

    def set_state(self, state: dict, best_weights=None) -> None:
        self.best_epoch = state.get("best_epoch")
        self.best_map = -np.inf if state.get("best_map") is None else state["best_map"]
        self.history = list(state.get("history", []))
        self.collapsed_epochs = list(state.get("collapsed_epochs", []))
        self._best_weights = best_weights


def seed_generators(model) -> list:
    """Every ``keras.random.SeedGenerator`` of a model's layers (dropout's, a method's own),
    in a fixed order. Their states are not weights, so a checkpoint misses them and a
    resumed run would draw other dropout masks than the run it resumes."""
    found = []
    for layer in nested_layers(model, include_self=True):
        found += [value for value in vars(layer).values()
                  if isinstance(value, keras.random.SeedGenerator)]
    return found


class TrainingBackup(keras.callbacks.Callback):
    """Epoch-end backups that survive ``kill -9``; rerunning the same fit resumes.

    Each epoch end writes ``ckpt-<epoch>.weights.h5`` (model and optimizer state) and
    then ``state.json`` naming it, each atomically, so the state always points at a
    complete checkpoint. Keras' ``BackupAndRestore`` writes both in place and can be
    caught half-way. The state also carries the ``RetrievalValidation`` selection
    (best epoch, per-epoch mAP, best weights) so a resumed run picks the same best epoch,
    and the seconds trained so far, so a resumed run reports its whole training time
    (``seconds_before``; the epoch cut short by the kill is lost and not counted).
    When training ends the state is marked done (``training_done`` after a restore): a
    run killed during its evaluation or save resumes without training again. The folder
    is removed by ``runs.RunWriter.finish`` once the finished run is on disk.

    Use ``initial_epoch = backup.restore()`` before ``fit(initial_epoch=...)``.
    """

    STATE = "state.json"

    def __init__(self, backup_dir, validation=None, write=True, recalibration=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.validation = validation
        # the BatchNormalization recalibration, whose epochs a resumed run still reports
        self.recalibration = recalibration
        self.write = write  # False: restore only (a non-chief worker)
        # Training seconds of the epochs in the restored backup; None when the backup
        # predates this field (its time is unknown).
        self.seconds_before = 0.0
        self.training_done = False
        self._clock_start = time.time()

    def _path(self, name):
        return os.path.join(self.backup_dir, name)

    def restore(self) -> int:
        """Load the last complete checkpoint into the model; return the epoch to start at.

        Training time is counted from here (``fit`` calls this just before it starts).
        """
        self._clock_start = time.time()
        if not os.path.exists(self._path(self.STATE)):
            return 0
        model = self.model
        try:
            state = read_json(self._path(self.STATE))
            if not isinstance(state, dict):
                raise ValueError("the state is not a JSON object")
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            for key in ("weights", "best_weights"):
                name = state.get(key)
                if name is not None and (not isinstance(name, str) or
                                         os.path.basename(name) != name):
                    raise ValueError(f"{key} names {name!r}, not a checkpoint of the backup")
            if self.validation is not None and state.get("best_weights"):
                model.load_weights(self._path(state["best_weights"]))
                self.validation.set_state(state["validation"], model.get_weights())
            model.load_weights(self._path(state["weights"]))
            epoch = int(state["epoch"])
            seconds = state.get("train_seconds")
            if seconds is not None:
                seconds = float(seconds)
        except Exception as e:  # noqa: BLE001 - h5py and Keras raise many types
            raise RunDirError(f"{self.backup_dir}: cannot resume from the backup ({e}); rerun "
                              "with --restart to start this run over") from None
        self.seconds_before = seconds
        self.training_done = bool(state.get("training_done"))
        generators = seed_generators(model)
        for generator, saved in zip(generators, state.get("seed_states") or []):
            generator.state.assign(np.asarray(saved, generator.state.dtype))
        if self.recalibration is not None:
            recalibrated = state.get("recalibrated_epochs", [])
            self.recalibration.recalibrated_epochs = [
                int(e) for e in (recalibrated if isinstance(recalibrated, list) else [])]
        return epoch

    def on_epoch_end(self, epoch, logs=None):
        if not self.write:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = f"ckpt-{epoch + 1}.weights.h5"
        with atomic_path(self._path(weights), suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        state = {"epoch": epoch + 1, "weights": weights}
        if self.seconds_before is not None:
            state["train_seconds"] = self.seconds_before + time.time() - self._clock_start
        old = read_json(self._path(self.STATE)) if os.path.exists(self._path(self.STATE)) else {}
        state["best_weights"] = old.get("best_weights")
        if self.validation is not None:
            state["validation"] = self.validation.get_state()
            if self.validation.best_epoch == epoch + 1:  # this epoch is the new best
                state["best_weights"] = weights
        if self.recalibration is not None:
            state["recalibrated_epochs"] = list(self.recalibration.recalibrated_epochs)
        # where dropout's random numbers stand, so a resume draws the masks this run would
        state["seed_states"] = [np.asarray(g.state).tolist()
                                for g in seed_generators(self.model)]
        write_json(self._path(self.STATE), state)
        keep = {weights, state["best_weights"], self.STATE}
        for name in os.listdir(self.backup_dir):  # stale checkpoints, only after the switch
            if name.startswith("ckpt-") and name not in keep:
                os.unlink(self._path(name))

    def on_train_end(self, logs=None):
        state_path = self._path(self.STATE)
        if self.write and os.path.exists(state_path):
            write_json(state_path, {**read_json(state_path), "training_done": True})


class NonFiniteLossError(RunDirError):
    """Training diverged: the loss or the weights became NaN or infinite."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Stop training with one line naming the epoch and step where the loss became NaN
    or infinite, before an epoch end could back the bad weights up.

    Keras' ``TerminateOnNaN`` stops quietly and lets the run be saved as finished; this
    raises ``NonFiniteLossError`` instead, so the run keeps its last good backup. Put it
    first in the callback list. The weights are also checked at each epoch end (the last
    step's update can make them NaN after a finite loss).
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(np.asarray(loss))):
            self._stop(f"the loss became {float(np.asarray(loss))} at epoch {self.epoch + 1}, "
                       f"step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        for weight in self.model.trainable_weights:
            if not np.all(np.isfinite(np.asarray(weight))):
                self._stop(f"{weight.path} became NaN or infinite in epoch {epoch + 1}")

    def _stop(self, what):
        raise NonFiniteLossError(f"training diverged: {what}. Nothing diverged was saved "
                                 "(the run keeps its last good epoch, if any); lower the "
                                 "learning rate and rerun with --restart")


class BackboneWarmup(keras.callbacks.Callback):
    """Transfer learning's warm-up: the backbone is frozen for the first ``epochs`` epochs
    (only the hashing head learns; BatchNormalization runs in inference mode, keeping
    its ImageNet statistics), then unfrozen for the rest of training.

    The optimizer is built on every variable before the first freeze, so its state
    covers the backbone when it joins (and a resumed run restores it whole).
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)

    def on_epoch_begin(self, epoch, logs=None):
        self.set_frozen(epoch < self.epochs)

    def set_frozen(self, frozen: bool) -> None:
        backbone = self.model.backbone
        if backbone.trainable == (not frozen):
            return
        backbone.trainable = not frozen
        # The compiled step captured the old list of trainable variables: retrace it.
        self.model.make_train_function(force=True)


class PhasedCallback(keras.callbacks.Callback):
    """One callback of a training run that Keras' ``fit`` runs in consecutive phases (the
    epochs on a frozen backbone's cached features, then the epochs on images): it sees
    ``on_train_begin`` only in the first phase and ``on_train_end`` only in the last, so
    it keeps its state across the phases as it does across the epochs of one ``fit``.

    Example:
        >>> phases = [[PhasedCallback(c, first=True, last=False) for c in callbacks],
        ...           [PhasedCallback(c, first=False, last=True) for c in callbacks]]  # doctest: +SKIP
    """

    def __init__(self, callback, first: bool, last: bool):
        super().__init__()
        self.callback, self.first, self.last = callback, first, last

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def on_train_begin(self, logs=None):
        if self.first:
            self.callback.on_train_begin(logs)

    def on_train_end(self, logs=None):
        if self.last:
            self.callback.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.callback.on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self.callback.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.callback.on_train_batch_end(batch, logs)

    def on_test_begin(self, logs=None):
        self.callback.on_test_begin(logs)

    def on_test_end(self, logs=None):
        self.callback.on_test_end(logs)

    def on_test_batch_begin(self, batch, logs=None):
        self.callback.on_test_batch_begin(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self.callback.on_test_batch_end(batch, logs)


class HashingTensorBoard(keras.callbacks.Callback):
    """Hashing-specific TensorBoard summaries, beside Keras' own scalars.

    Every epoch, on a fixed sample of validation images, writes under ``log_dir/hashing``:

    * ``bits/balanced_fraction``: share of bits whose ones-rate is in [0.3, 0.7];
    * ``bits/constant_bits``: bits that never change (collapse);
    * ``bits/quantization_error``: mean |h - b|, continuous code vs its binary value;
    * ``bits/mean_correlation``: mean |correlation| between pairs of bits;
    * ``bits/unique_code_fraction``;
    * ``bits/distinct_codes`` and ``bits/collapsed`` (1 where ``evaluation.collapse_check``
      finds the sample's codes collapsed);
    * histograms ``code/activations`` (all of h) and ``bits/ones_rate`` (per bit).

    At the end of training it writes the Embedding Projector files (Keras 3's
    ``embeddings_freq`` does not work) beside those summaries: a checkpoint of the
    continuous codes, ``metadata.tsv`` (labels) and ``sprite.png`` (thumbnails), tied
    together by ``projector_config.pbtxt``. TensorBoard's projector only looks in run
    folders, the ones holding event files, so ``tensorboard --logdir RUN/logs`` shows
    them as the run "hashing".

    Args:
        log_dir: the run's TensorBoard folder (``RUN/logs``).
        split: the validation split, subsampled to ``max_samples`` images (read into
            memory once, also for a streamed split).
        class_names: names for the projector's metadata, or None.
    """

    def __init__(self, log_dir, split, class_names=None, max_samples=1000, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.sample_index = np.sort(rng.permutation(len(split))[:max_samples])
        sample = split.subset(self.sample_index)
        self.images, self.labels = sample.x, sample.y
        self.features = None  # the sample's backbone features while training on a cache
        self.class_names = class_names
        self.log_dir = log_dir
        self.hashing_dir = os.path.join(log_dir, "hashing")
        self.projector_dir = self.hashing_dir  # a folder with events: a TensorBoard run
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        out = (model.predict_arrays(self.images, batch_size=256) if self.features is None
               else model.head_arrays(self.features))
        h = np.asarray(out["code"], np.float32)
        bits = np.asarray(out["bits"], np.uint8)
        stats = code_statistics(bits)
        collapse = collapse_check(bits, self.labels)
        target = np.asarray(model.quantization_target(h, bits), np.float32)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.hashing_dir)
        with self._writer.as_default(step=epoch):
            tf.summary.scalar("bits/balanced_fraction", stats["balanced_bit_fraction"])
            tf.summary.scalar("bits/constant_bits", stats["constant_bits"])
            tf.summary.scalar("bits/mean_correlation", stats["mean_bit_correlation"])
            tf.summary.scalar("bits/unique_code_fraction", stats["unique_code_fraction"])
            tf.summary.scalar("bits/distinct_codes", collapse["distinct_codes"])
            tf.summary.scalar("bits/collapsed", float(collapse["collapsed"]))
            tf.summary.scalar("bits/quantization_error", float(np.abs(h - target).mean()))
            tf.summary.histogram("code/activations", h)
            tf.summary.histogram("bits/ones_rate", bits.mean(axis=0))
        self._writer.flush()

    def use_features(self, val_features) -> None:
        """Summarise the coming epochs from the validation split's stored backbone
        features (rows of ``val_features``, N x D), or from the images again (None)."""
        self.features = (None if val_features is None
                         else np.asarray(val_features[self.sample_index], np.float32))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
        codes = (self.model.embed(self.images) if self.features is None
                 else self.model.head_arrays(self.features)["code"])
        write_projector(self.projector_dir, codes, self.labels, self.images, self.class_names)


def write_projector(out_dir, embeddings, labels, images=None, class_names=None) -> None:
    """Embedding Projector files: checkpoint + metadata.tsv + sprite.png + config."""
    os.makedirs(out_dir, exist_ok=True)
    labels = np.asarray(labels)
    names = [(class_names[int(y)] if class_names else str(int(y))) if labels.ndim == 1
             else ",".join(map(str, np.flatnonzero(y))) for y in labels]
    write_text(os.path.join(out_dir, "metadata.tsv"), "".join(f"{n}\n" for n in names))
    # save() (not write()) keeps the "checkpoint" state file the projector looks for.
    tf.train.Checkpoint(embedding=tf.Variable(np.asarray(embeddings, np.float32))).save(
        os.path.join(out_dir, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    emb = config.embeddings.add()
    emb.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    emb.metadata_path = "metadata.tsv"
    if images is not None:
        sprite, (h, w) = _sprite(np.asarray(images))
        with atomic_path(os.path.join(out_dir, "sprite.png"), suffix=".png") as tmp:
            Image.fromarray(sprite).save(tmp, format="PNG")
        emb.sprite.image_path = "sprite.png"
        emb.sprite.single_image_dim.extend([w, h])
    projector.visualize_embeddings(out_dir, config)


def _sprite(images):
    """Square mosaic of thumbnails (the projector's sprite format), uint8."""
    n, h, w = images.shape[:3]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    side = int(np.ceil(np.sqrt(n)))
    sprite = np.zeros((side * h, side * w, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, side)
        sprite[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    return sprite, (h, w)
