"""Multi-worker training: Model.fit's callback protocol over ``strategy.run(train_step)``.

Keras 3.15's ``Model.fit`` fails under ``MultiWorkerMirroredStrategy`` on its first step
("Attempt to convert a value (PerReplica...) to a Tensor"; keras-team/keras#20585), and
so does ``predict`` (this module can go once a Keras release closes that issue). The
strategy itself works: this loop distributes the dataset, runs each method's own
``train_step`` in every replica (the same step ``fit`` runs, with its global-batch
gather and loss scaling), reduces the logs across workers, and drives the usual Keras
callbacks (validation, backups, TensorBoard, the B step of BDNN, early
stopping) in the order ``fit`` does. ``HashingModel.embed`` encodes without ``predict``
under this strategy (``multi_worker``).

Every worker runs this loop on the same data with the same weights; only the chief
writes the run directory (``is_chief``); the others write to a scratch folder.

Example (one command per machine, TF_CONFIG naming the cluster and this worker)::

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
        keras-hashing fit --method dsh --strategy multiworker --out /shared/runs/dsh
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_hashing.models.prediction import multi_worker


def is_chief(strategy) -> bool:
    """The worker that writes the run: TF_CONFIG's chief, else worker 0 (or no cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not multi_worker(strategy) or resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def agree(strategy, value: int) -> tuple:
    """(min, max) of an integer over every replica of every worker (a collective)."""
    per_replica = strategy.run(lambda: tf.constant([float(value)]))
    values = strategy.gather(per_replica, axis=0).numpy()
    return int(values.min()), int(values.max())


def fit_in_custom_loop(model, dataset, strategy, epochs, initial_epoch=0, callbacks=(),
                       verbose="auto"):
    """Train ``model`` on ``dataset`` (global batches) like ``model.fit``; returns History.

    Logs are the replicas' tracked terms averaged across workers, so every worker sees
    (and its callbacks act on) the same numbers.
    """
    distributed = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def step(batch):
        logs = strategy.run(model.train_step, args=(batch,))
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in logs.items()}

    progress = verbose not in (0, False)
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=progress,
        verbose=1 if verbose == "auto" else verbose, epochs=epochs, steps=None, model=model)
    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for i, batch in enumerate(distributed):
            callback_list.on_train_batch_begin(i)
            logs = {name: float(value) for name, value in step(batch).items()}
            callback_list.on_train_batch_end(i, logs)
        epoch_logs = dict(logs)
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return next(c for c in callback_list.callbacks if isinstance(c, keras.callbacks.History))
