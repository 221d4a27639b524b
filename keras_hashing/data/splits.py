"""The one interface every split keeps, whatever holds its images.

A ``Split`` has labels ``y`` (N,) or (N, C) in memory, a length, an image shape and
``subset(indices)``; its images are in memory (``ArraySplit``: digits, Fashion-MNIST)
or streamed (``StreamedSplit``: image files, TensorFlow Datasets), and a split of image
files also has their ``paths`` and its bad-image policy ``on_bad_image``. Code that takes
a split reads these attributes; it never probes for them.

Example:
    >>> import numpy as np
    >>> s = ArraySplit(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1]))
    >>> len(s), s.image_shape, s.paths, s.subset([1, 3]).y.tolist()
    (4, (8, 8, 1), None, [1, 1])
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import os

import numpy as np

from keras_hashing.data.images import check_readable
from keras_hashing.errors import DataError

# A streamed split read whole into memory (a closed-form baseline's training pixels, a
# plot) must fit comfortably; beyond this the error says what to do instead.
MAX_IN_MEMORY_BYTES = 4 << 30
SPLIT_NAMES = ("train", "val", "query", "database")
# "from-train": validation images are carved out of the training split and pick the best
# epoch; "none": the model trains on the whole training split for its epochs and keeps
# the last (the published tables' way), and "val" is a sample of training images that
# only monitors the fit.
VALIDATION_SETTINGS = ("from-train", "none")


class Split(abc.ABC):
    """Base of every split. Attributes: ``y`` (labels, or None for unlabelled image
    files), ``paths`` (image files (N,), None unless the split reads files),
    ``on_bad_image`` ("fail" or "skip"), ``in_memory``, ``x`` (every image, uint8
    (N, H, W, C))."""

    y: np.ndarray | None
    paths = None
    on_bad_image = "fail"
    in_memory = False

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of images."""

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple:
        """(H, W, C) of every image as the model sees it."""

    @abc.abstractmethod
    def subset(self, indices) -> "Split":
        """The split of the images at ``indices`` (a streamed one may reorder them to file
        order: take labels from the subset, not from the parent)."""


class EpochOrder:
    """The order of the examples at each pass over a split: epoch e's is
    ``default_rng([seed, e]).permutation(n)``, whatever came before it.

    Example:
        >>> EpochOrder(5, seed=0).permutation(2).tolist() == EpochOrder(5, 0).permutation(2).tolist()
        True
    """

    def __init__(self, n, seed=0):
        self.n, self.seed = int(n), int(seed)

    def permutation(self, epoch) -> np.ndarray:
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.n)

    def positions(self, epoch):
        """Epoch ``epoch``'s order (a scalar tensor inside tf.data) as an unbatched
        ``tf.data.Dataset`` of int64 positions."""
        import tensorflow as tf

        return tf.data.Dataset.from_generator(
            lambda e: iter([self.permutation(e).astype(np.int64)]), args=(epoch,),
            output_signature=tf.TensorSpec((self.n,), tf.int64)).unbatch()


def stateless_key(seed, salt, *data):
    """A stateless random seed (int64 tensor of shape (2,)) drawn from ``[seed, salt]``
    and then each of ``data`` (ints or scalar tensors: an epoch, a step) in turn: what a
    pipeline's random op of that epoch and step draws from, whatever ran before it."""
    import tensorflow as tf

    key = tf.constant([int(seed), int(salt)], tf.int64)
    for value in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
    return key


@dataclasses.dataclass
class ArraySplit(Split):
    """Images (N, H, W, C) uint8 held in memory, and labels (N,) or (N, C)."""

    x: np.ndarray
    y: np.ndarray
    in_memory = True

    def __len__(self):
        return int(self.x.shape[0])

    @property
    def image_shape(self):
        return tuple(int(s) for s in self.x.shape[1:])

    def subset(self, indices) -> "ArraySplit":
        return ArraySplit(self.x[indices], self.y[indices])


class StreamedSplit(Split):
    """A split whose labels are in memory and whose pixels are read on demand (image
    files, TFDS). Subclasses have ``image_size`` and ``channels`` and stream their
    images with ``images()`` (encoding) and ``examples()`` (training)."""

    in_memory = False

    def __len__(self):
        return len(self.y)

    @property
    def image_shape(self):
        return (int(self.image_size[0]), int(self.image_size[1]), int(self.channels))

    @abc.abstractmethod
    def images(self):
        """An unbatched ``tf.data.Dataset`` of (image uint8 ``image_shape``, ok), in
        order; ``ok`` is False for an image that could not be read (its pixels zeros)."""

    @abc.abstractmethod
    def examples(self, shuffle=False, seed=0, epoch=0):
        """An unbatched ``tf.data.Dataset`` of (image, label, position in the split) for
        training; shuffled, in an order drawn from (``seed``, ``epoch``: an int or a
        scalar tensor) alone. The split's bad-image policy applies (skipped images are
        left out)."""

    @property
    def x(self) -> np.ndarray:
        """Every image of the split as one uint8 array (for what needs them all at once)."""
        need = len(self) * int(np.prod(self.image_shape))
        if need > MAX_IN_MEMORY_BYTES:
            raise DataError(f"this needs all {len(self):,} images of a split in memory "
                            f"({need / 2**30:.1f} GiB decoded); use a method that trains "
                            "by gradients, or a smaller collection or image size")
        images, ok = [], []
        for batch, good in self.images().batch(256).as_numpy_iterator():
            images.append(batch)
            ok.append(good)
        # unreadable images (only image files have them) fail, or stay black with a warning
        check_readable(self.paths, np.concatenate(ok), self.on_bad_image, "read as black")
        return np.concatenate(images)


@dataclasses.dataclass
class DatasetSplits:
    """The four splits of a protocol: ``train`` (fitted on), ``val`` (model selection,
    carved from the training data), ``query`` and ``database``."""

    name: str
    protocol: str
    train: Split
    val: Split
    query: Split
    database: Split
    num_classes: int
    multi_label: bool = False
    class_names: list | None = None
    validation: str = "from-train"
    # the fold of an unseen-class protocol (which pair of classes is held out), else None
    unseen_fold: int | None = None

    @property
    def input_shape(self):
        return self.train.image_shape

    def split(self, name: str) -> Split:
        """The split called ``name`` (train, val, query or database)."""
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split {name!r}; choose from {', '.join(SPLIT_NAMES)}")
        return {"train": self.train, "val": self.val, "query": self.query,
                "database": self.database}[name]

    def summary(self) -> dict:
        fold = {} if self.unseen_fold is None else {"unseen_fold": self.unseen_fold}
        return {"dataset": self.name, "protocol": self.protocol, **fold,
                "validation_setting": self.validation,
                **{f"num_{s}": len(self.split(s)) for s in SPLIT_NAMES}}


# -- carving splits ----------------------------------------------------------------------
# -- splits ------------------------------------------------------------------------------
def stratified_take(y, fraction=None, per_class=None, rng=None, pool=None):
    """Indices (taken, rest) with ``per_class`` items (or ``fraction``) of each class."""
    pool = np.arange(len(y)) if pool is None else np.asarray(pool)
    keys = y[pool] if y.ndim == 1 else np.argmax(y[pool], axis=1)
    taken = []
    for c in np.unique(keys):
        members = pool[keys == c]
        n = per_class if per_class is not None else int(round(fraction * len(members)))
        taken.append(rng.permutation(members)[:n])
    taken = np.sort(np.concatenate(taken))
    return taken, np.setdiff1d(pool, taken)


def take_validation(y, rng, validation="from-train", pool=None, fraction=None,
                    per_class=None):
    """Positions (val, train) of a training pool (default: all of ``y``): ``from-train``
    holds the stratified sample out of training; ``none`` trains on the whole pool and the
    same sample only monitors (``VALIDATION_SETTINGS``). Both draw alike from ``rng``.

    Example:
        >>> y = np.repeat([0, 1], 10)
        >>> [len(p) for p in take_validation(y, np.random.default_rng(0), fraction=0.2)]
        [4, 16]
        >>> [len(p) for p in take_validation(y, np.random.default_rng(0), "none", fraction=0.2)]
        [4, 20]
    """
    if validation not in VALIDATION_SETTINGS:
        raise DataError(f"validation must be one of {', '.join(VALIDATION_SETTINGS)}, got "
                        f"{validation!r}")
    val_idx, train_idx = stratified_take(y, fraction=fraction, per_class=per_class, rng=rng,
                                         pool=pool)
    if validation == "none":
        train_idx = np.arange(len(y)) if pool is None else np.sort(np.asarray(pool))
    return val_idx, train_idx


def carve(whole, q_idx, db_idx, val_fraction, rng, validation="from-train"):
    """query / database / val / train subsets of a split (val carved from the database,
    or under ``validation="none"`` only sampled from it)."""
    val_idx, train_idx = take_validation(whole.y, rng, validation, pool=db_idx,
                                         fraction=val_fraction)
    return {"query": whole.subset(q_idx), "database": whole.subset(db_idx),
            "val": whole.subset(val_idx), "train": whole.subset(train_idx)}


def split_digest(split) -> str:
    """sha256 of a split's image paths (or pixels, in memory) and labels, in order: what
    a run records to notice later that its images changed.

    Example:
        >>> import numpy as np
        >>> a = ArraySplit(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]))
        >>> split_digest(a) == split_digest(a.subset([1, 0]))
        False
    """
    digest = hashlib.sha256()
    if split.paths is not None:
        # the last two parts (class folder, file name): a moved copy of a collection
        # matches; an image moved to another class, added or removed does not
        for path in split.paths:
            head, name = os.path.split(str(path))
            digest.update(f"{os.path.basename(head)}/{name}".encode("utf-8", "surrogateescape")
                          + b"\0")
    elif split.in_memory:
        digest.update(np.ascontiguousarray(split.x).tobytes())
    if split.y is not None:
        labels = np.ascontiguousarray(split.y)
        digest.update(str(labels.dtype).encode() + str(labels.shape).encode() + labels.tobytes())
    return digest.hexdigest()
