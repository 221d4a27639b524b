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
