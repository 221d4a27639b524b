"""Keras callbacks for hashing runs: validation retrieval metrics and best-epoch selection."""

from __future__ import annotations

import keras
import numpy as np

from keras_hashing.evaluation import retrieval_metrics


class RetrievalValidation(keras.callbacks.Callback):
    """Adds ``val_map`` (mAP@all) and ``val_p_r2`` to the epoch logs and keeps the best epoch.

    Queries are the validation split, the database is (a subsample of) the training split:
    model selection never touches the query set. Put this callback before TensorBoard and
    EarlyStopping in the list so they see the new keys. At the end of training the
    weights of the best epoch (highest ``val_map``) are restored.

    Args:
        val_x, val_y: validation images and labels (the queries).
        db_x, db_y: retrieval database for validation (training images).
        bits: code length.
        restore_best: restore the best epoch's weights at the end.
    """

    def __init__(self, val_x, val_y, db_x, db_y, bits, restore_best=True):
        super().__init__()
        self.val_x, self.val_y, self.db_x, self.db_y = val_x, val_y, db_x, db_y
        self.bits = bits
        self.restore_best = restore_best
        self.best_map = -np.inf
        self.best_epoch = None
        self._best_weights = None
        self.history: list = []

    def on_epoch_end(self, epoch, logs=None):
        m = self.model
        metrics = retrieval_metrics(m.encode(self.val_x), m.encode(self.db_x), self.val_y,
                                    self.db_y, self.bits, map_at=(None,), radius=2)
        if logs is not None:
            logs["val_map"] = metrics["map_all"]
            logs["val_p_r2"] = metrics["p_r2"]
        self.history.append(metrics["map_all"])
        if metrics["map_all"] > self.best_map:
            self.best_map = metrics["map_all"]
            self.best_epoch = epoch + 1
            if self.restore_best:
                self._best_weights = m.get_weights()

    def on_train_end(self, logs=None):
        if self.restore_best and self._best_weights is not None:
            self.model.set_weights(self._best_weights)

    def get_state(self) -> dict:
        """JSON-able selection state (for TrainingBackup)."""
        return {"best_map": None if self.best_epoch is None else float(self.best_map),
                "best_epoch": self.best_epoch, "history": list(self.history)}

    def set_state(self, state: dict, best_weights=None) -> None:
        self.best_epoch = state.get("best_epoch")
        self.best_map = -np.inf if state.get("best_map") is None else state["best_map"]
        self.history = list(state.get("history", []))
        self._best_weights = best_weights


class TrainingBackup(keras.callbacks.Callback):
    """Epoch-end backups that survive ``kill -9``; rerunning the same fit resumes.

    Each epoch end writes ``ckpt-<epoch>.weights.h5`` (model and optimizer state) and
    then ``state.json`` naming it, each atomically, so the state always points at a
    complete checkpoint. Keras' ``BackupAndRestore`` writes both in place and can be
    caught half-way. The state also carries the ``RetrievalValidation`` selection
    (best epoch, per-epoch mAP, best weights) so a resumed run picks the same best epoch.
    The folder is removed when training ends normally.

    Use ``initial_epoch = backup.restore()`` before ``fit(initial_epoch=...)``.
    """

    STATE = "state.json"

    def __init__(self, backup_dir, validation=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.validation = validation

    def _path(self, name):
        import os

        return os.path.join(self.backup_dir, name)

    def restore(self) -> int:
        """Load the last complete checkpoint into the model; return the epoch to start at."""
        import os

        from keras_hashing.errors import RunDirError
        from keras_hashing.fileio import read_json

        if not os.path.exists(self._path(self.STATE)):
            return 0
        state = read_json(self._path(self.STATE))
        model = self.model
        try:
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            if self.validation is not None and state.get("best_weights"):
                model.load_weights(self._path(state["best_weights"]))
                self.validation.set_state(state["validation"], model.get_weights())
            model.load_weights(self._path(state["weights"]))
        except (OSError, ValueError, KeyError) as e:
            raise RunDirError(f"{self.backup_dir}: cannot resume from the backup ({e}); delete "
                              "the folder to start this run over") from None
        return int(state["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        import os

        from keras_hashing.fileio import atomic_path, read_json, write_json

        os.makedirs(self.backup_dir, exist_ok=True)
        weights = f"ckpt-{epoch + 1}.weights.h5"
        with atomic_path(self._path(weights), suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        state = {"epoch": epoch + 1, "weights": weights}
        old = read_json(self._path(self.STATE)) if os.path.exists(self._path(self.STATE)) else {}
        state["best_weights"] = old.get("best_weights")
        if self.validation is not None:
            state["validation"] = self.validation.get_state()
            if self.validation.best_epoch == epoch + 1:  # this epoch is the new best
                state["best_weights"] = weights
        write_json(self._path(self.STATE), state)
        keep = {weights, state["best_weights"], self.STATE}
        for name in os.listdir(self.backup_dir):  # stale checkpoints, only after the switch
            if name.startswith("ckpt-") and name not in keep:
                os.unlink(self._path(name))

    def on_train_end(self, logs=None):
        import shutil

        shutil.rmtree(self.backup_dir, ignore_errors=True)
