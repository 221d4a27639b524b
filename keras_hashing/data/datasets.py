"""Datasets by name, split by the evaluation protocols of DESIGN.md.

Names:

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images); the embedded default.
* ``fashion_mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``) or ``data_dir``.
* ``tfds:NAME``: a TensorFlow Datasets dataset, downloaded and prepared as ``tfds.load``
  does unless ``download=False`` or it is already prepared under ``data_dir``; streamed
  from the prepared files.
* ``folder:PATH``, ``list:FILE`` (or ``list:DIR`` of DeepHash-pytorch's train.txt,
  test.txt, database.txt), ``csv:FILE``: a collection on disk (``keras_hashing.data.image_files``),
  streamed and decoded batch by batch.

Images are raw pixels: uint8 (H, W, C) in 0..255. The model rescales them, so clients
send pixels as they are. Labels are class ids (N,) or multi-hot (N, C).

A split (``splits.Split``) is held in memory (``ArraySplit``: digits, Fashion-MNIST) or
streamed (``image_files.FileSplit`` for image files, ``tfds.TfdsSplit`` for TensorFlow
Datasets): all have ``y``, ``len``, ``image_shape``, ``subset(indices)`` and go through
``pipeline.make_tf_dataset`` and ``pipeline.inference_dataset``; only labels are held in
memory for a streamed one.

Every protocol yields four splits: ``train`` (fitted on), ``val`` (model selection;
carved from the training data, never the query set), ``query`` and ``database``.

Example:
    >>> splits = load_dataset("digits")
    >>> splits.input_shape, splits.num_classes, len(splits.query.y), len(splits.database.y)
    ((8, 8, 1), 10, 359, 1438)
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct

import numpy as np

from keras_hashing.data import benchmarks
from keras_hashing.data import image_files
from keras_hashing.data import images
from keras_hashing.data.image_files import DEFAULT_IMAGE_SIZE, FileSplit, load_images
from keras_hashing.data.tfds import tfds_splits
from keras_hashing.data.splits import (VALIDATION_SETTINGS, ArraySplit, DatasetSplits, carve,
                                      stratified_take, take_validation)
from keras_hashing.errors import DataError
from keras_hashing.fileio import read_user_file

# Pixels are uint8 0..255 everywhere until a model (or a pixel-space baseline) scales
# them to [0, 1] by this, the one place the factor is written.
PIXEL_SCALE = 1.0 / 255.0


def flat_pixels(images) -> np.ndarray:
    """Images (N, H, W, C) as flat float32 rows in [0, 1] (pixel-space methods)."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) * np.float32(PIXEL_SCALE)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# fmnist-unseen's folds: fold f holds out one pair of classes, each class exactly once
# over the five. Fold 0 is the original pair (Bag, Ankle boot); the rest go through the
# classes in order, a fixed rule, not a pick of the pairs that flatter a method. One fold
# is a two-class retrieval problem whose boundary moves with every run, so a cell is the
# mean over folds.
FMNIST_UNSEEN_FOLDS = ((8, 9), (0, 1), (2, 3), (4, 5), (6, 7))
UNSEEN_PROTOCOLS = ("fmnist-unseen", "fmnist-unseen-all")
FASHION_MNIST_APT = "apt-get update && apt-get install -y dataset-fashion-mnist"
IMAGE_EXTENSIONS = image_files.IMAGE_EXTENSIONS
PROTOCOLS = {
    "digits": ("digits",),
    "fashion_mnist": ("fmnist", "fmnist-reduced", "fmnist-unseen", "fmnist-unseen-all"),
    "tfds": ("standard", *benchmarks.CIFAR10_PROTOCOLS),
    "folder": ("standard",),
    "list": ("standard", *benchmarks.LIST_PROTOCOLS),
    "csv": ("standard",),
}


def dataset_kind(name: str) -> str:
    """The kind of a ``dataset:`` spec: digits, fashion_mnist, tfds, or a collection's
    (``image_files.source_kind``: folder, list, csv); DataError for anything else."""
    if name in ("digits", "fashion_mnist"):
        return name
    if name.startswith("tfds:") and len(name) > len("tfds:"):
        return "tfds"
    kind = image_files.source_kind(name)
    if kind:
        return kind
    raise DataError(f"unknown dataset {name!r}; use digits, fashion_mnist, tfds:NAME, "
                    "folder:PATH, list:FILE or csv:FILE")


def default_protocol(name: str) -> str:
    return PROTOCOLS[dataset_kind(name)][0]


def load_dataset(name="digits", protocol=None, data_dir=None, seed=0, image_size=None,
                 channels=None, download=True, on_bad_image="fail",
                 unseen_fold=None, validation="auto") -> DatasetSplits:
    """Load a dataset by name and split it by ``protocol`` (default: the dataset's first).

    ``download`` (``tfds:`` only) fetches and prepares a dataset that is not prepared yet,
    as ``tfds.load`` does; ``on_bad_image`` (image files) is ``"fail"`` or ``"skip"``;
    ``unseen_fold`` (``fmnist-unseen``, ``fmnist-unseen-all``: 0-4, default 0) picks the
    pair of held-out classes (``FMNIST_UNSEEN_FOLDS``); ``validation``
    (``splits.VALIDATION_SETTINGS``, or ``auto``: ``none`` for the field's standard
    protocols, ``from-train`` otherwise) whether validation images are held out of
    training for model selection or the whole training split trains.
    """
    kind = dataset_kind(name)
    protocol = protocol or PROTOCOLS[kind][0]
    if protocol not in PROTOCOLS[kind]:
        raise DataError(f"protocol {protocol!r} does not apply to {name}; choose from "
                        f"{', '.join(PROTOCOLS[kind])}")
    unseen_fold = check_unseen_fold(unseen_fold, protocol)
    if validation == "auto":
        validation = benchmarks.default_validation(protocol)
    if validation not in VALIDATION_SETTINGS:
        raise DataError(f"validation must be auto, {' or '.join(VALIDATION_SETTINGS)}, got "
                        f"{validation!r}")
    if protocol in benchmarks.LIST_PROTOCOLS and not (
            kind == "list" and os.path.isdir(name.split(":", 1)[1])):
        raise DataError(f"the {protocol} protocol reads DeepHash-pytorch's three lists: use "
                        "--dataset list:DIR (train.txt, test.txt, database.txt)")
    rng = np.random.default_rng(seed)
    if kind == "digits":
        x, y = _load_digits()
        q_idx, db_idx = stratified_take(y, fraction=0.2, rng=rng)
        splits = carve(ArraySplit(x, y), q_idx, db_idx, val_fraction=0.1, rng=rng,
                       validation=validation)
        num_classes = 10
        class_names = [str(i) for i in range(10)]
    elif kind == "fashion_mnist":
        splits = _fashion_mnist_splits(protocol, data_dir, rng, unseen_fold, validation)
        # fmnist-unseen trains on the 8 seen classes only (renumbered 0-7 for the head);
        # its query and database keep Fashion-MNIST's class ids, which no head predicts.
        num_classes = 8 if protocol in UNSEEN_PROTOCOLS else 10
        class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                       "Shirt", "Sneaker", "Bag", "Ankle boot"]
    elif kind == "tfds":
        splits, num_classes, class_names = tfds_splits(
            name.split(":", 1)[1], data_dir, rng, image_size, channels, download, protocol,
            validation)
    else:
        splits, num_classes, class_names = _file_splits(name, data_dir, rng, image_size,
                                                        channels, on_bad_image, validation)
        if protocol in benchmarks.LIST_PROTOCOLS:
            benchmarks.check_list_protocol(protocol, num_classes,
                                           splits["train"].y.ndim == 2, name)
    result = DatasetSplits(name=name, protocol=protocol, num_classes=num_classes,
                           class_names=class_names, multi_label=splits["train"].y.ndim == 2,
                           unseen_fold=unseen_fold, validation=validation, **splits)
    for split_name in ("train", "val", "query", "database"):
        if len(result.split(split_name)) == 0:
            raise DataError(f"dataset {name}: split {split_name!r} is empty; it needs more "
                            "images per class")
        labels = result.split(split_name).y
        if result.multi_label and labels is not None and not np.any(labels):
            # nothing would be relevant to anything: training learns nothing, mAP is 0
            raise DataError(f"dataset {name}: no image of split {split_name!r} has a label "
                            "(every multi-hot row is 0); check the label columns of the lists")
    return result


def _file_splits(name, data_dir, rng, image_size, channels, on_bad_image, validation):
    """Splits of a folder, list or CSV collection; nothing is decoded here."""
    images.check_policy(on_bad_image)
    kind, path = dataset_kind(name), name.split(":", 1)[1]
    size = tuple(image_size or DEFAULT_IMAGE_SIZE)

    def as_split(c):
        if c.labels is None:
            raise DataError(f"{name}: supervised training needs labels; the list gives "
                            "only paths")
        return FileSplit(c.paths, c.labels, size, channels or 3, on_bad_image)

    if kind == "list" and os.path.isdir(path):
        parts = image_files.read_deephash_lists(path, data_dir)
        train = as_split(parts["train"])
        val_idx, train_idx = take_validation(train.y, rng, validation, fraction=0.1)
        splits = {"query": as_split(parts["query"]), "database": as_split(parts["database"]),
                  "val": train.subset(val_idx), "train": train.subset(train_idx)}
        collection = image_files.concatenate(list(parts.values()))  # every class of the three
    else:
        collection = image_files.read_source(name, data_dir, on_bad_image)
        whole = as_split(collection)
        _check_class_sizes(whole.y, collection.class_names, path)
        q_idx, db_idx = stratified_take(whole.y, fraction=0.1, rng=rng)
        splits = carve(whole, q_idx, db_idx, val_fraction=0.1, rng=rng, validation=validation)
    num_classes = collection.num_classes
    return splits, num_classes, collection.class_names or [str(i) for i in range(num_classes)]


def _check_class_sizes(y, class_names, path):
    keys = y if y.ndim == 1 else np.argmax(y, axis=1)
    counts = np.bincount(keys, minlength=len(class_names or []))
    if counts.size and counts.min() < 2:
        cls = int(np.argmin(counts))
        name = class_names[cls] if class_names else str(cls)
        raise DataError(f"class {name!r} in {path} has {counts.min()} image(s); every class "
                        "needs at least 2 (similar pairs and relevant items need two)")


def check_unseen_fold(fold, protocol):
    """``fold`` as the fold index of an unseen-class protocol (None: 0 there, None
    elsewhere); DataError for a fold out of range or on a protocol without folds.

    Example:
        >>> check_unseen_fold(None, "fmnist-unseen"), check_unseen_fold(None, "fmnist")
        (0, None)
    """
    if fold is None:
        return 0 if protocol in UNSEEN_PROTOCOLS else None
    if protocol not in UNSEEN_PROTOCOLS:
        raise DataError(f"unseen_fold applies to the {' and '.join(UNSEEN_PROTOCOLS)} "
                        f"protocols, not {protocol}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not (
            0 <= fold < len(FMNIST_UNSEEN_FOLDS)):
        raise DataError(f"unseen_fold must be an integer 0-{len(FMNIST_UNSEEN_FOLDS) - 1}, "
                        f"got {fold!r}")
    return fold


def _fashion_mnist_splits(protocol, data_dir, rng, unseen_fold=None, validation="from-train"):
    x_tr, y_tr, x_te, y_te = load_fashion_mnist(data_dir)
    if protocol in UNSEEN_PROTOCOLS:
        return _unseen_class_splits(x_tr, y_tr, x_te, y_te, FMNIST_UNSEEN_FOLDS[unseen_fold],
                                    rng, protocol == "fmnist-unseen-all", validation)
    if protocol == "fmnist":
        # queries = test; database = all 60k training images; 500/class held out for
        # selection (still in the database, never trained on).
        val_idx, train_idx = take_validation(y_tr, rng, validation, per_class=500)
        return {"query": ArraySplit(x_te, y_te), "database": ArraySplit(x_tr, y_tr),
                "val": ArraySplit(x_tr[val_idx], y_tr[val_idx]),
                "train": ArraySplit(x_tr[train_idx], y_tr[train_idx])}
    # fmnist-reduced (DPSH/DSDH style): 100/class queries from test, 500/class training
    # images from train, database = the other 69,000; validation = 50/class from database
    # images that are not training images (so the 5,000 training images stay whole, and
    # validation "none" changes only the epoch kept).
    x = np.concatenate([x_tr, x_te])
    y = np.concatenate([y_tr, y_te])
    test_pool = np.arange(len(y_tr), len(y))
    q_idx, _ = stratified_take(y, per_class=100, rng=rng, pool=test_pool)
    db_idx = np.setdiff1d(np.arange(len(y)), q_idx)
    train_idx, _ = stratified_take(y, per_class=500, rng=rng, pool=np.arange(len(y_tr)))
    val_idx, _ = stratified_take(y, per_class=50, rng=rng,
                                  pool=np.setdiff1d(db_idx, train_idx))
    return {name: ArraySplit(x[idx], y[idx]) for name, idx in
            (("query", q_idx), ("database", db_idx), ("val", val_idx), ("train", train_idx))}


def _unseen_class_splits(x_tr, y_tr, x_te, y_te, unseen, rng, whole_database=False,
                         validation="from-train"):
    """Retrieval of classes never seen in training (Sablayrolles et al., ICASSP 2017):
    train and validate on the other classes (500 per class of the training images held
    out for selection); queries are the test images of the ``unseen`` classes, the
    database their training images, or with ``whole_database`` every training image of
    every class (DSH_Analysis' "unseen@all": a code must also keep the unseen classes
    away from the seen ones). Relevance stays "same class". The seen classes train as
    0, 1, ... in their order, so a head has one output per seen class whichever pair is
    held out."""
    seen_tr = np.flatnonzero(~np.isin(y_tr, unseen))
    val_idx, train_idx = take_validation(y_tr, rng, validation, pool=seen_tr, per_class=500)
    q_idx = np.flatnonzero(np.isin(y_te, unseen))
    db_idx = np.arange(len(y_tr)) if whole_database else np.flatnonzero(np.isin(y_tr, unseen))
    seen_id = np.cumsum(~np.isin(np.arange(10), unseen)) - 1  # class id -> its seen index
    return {"query": ArraySplit(x_te[q_idx], y_te[q_idx]),
            "database": ArraySplit(x_tr[db_idx], y_tr[db_idx]),
            "val": ArraySplit(x_tr[val_idx], seen_id[y_tr[val_idx]]),
            "train": ArraySplit(x_tr[train_idx], seen_id[y_tr[train_idx]])}


# -- loaders -----------------------------------------------------------------------------
def _load_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return x, d.target.astype(np.int64)


def load_fashion_mnist(data_dir=None):
    """(x_train, y_train, x_test, y_test) from the IDX files; uint8 (N, 28, 28, 1)."""
    data_dir = data_dir or FASHION_MNIST_DIR
    if not os.path.isdir(data_dir):
        raise DataError(f"Fashion-MNIST directory {data_dir} does not exist; install it with "
                        f"`{FASHION_MNIST_APT}` or pass --data-dir")
    parts = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(data_dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(data_dir, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{data_dir}: {prefix} images {images.shape} and labels "
                            f"{labels.shape} do not match")
        if labels.size and labels.max() > 9:
            raise DataError(f"{data_dir}: {prefix} labels go up to {labels.max()}, but "
                            "Fashion-MNIST has classes 0..9; the label file is corrupt")
        parts += [images[..., None], labels.astype(np.int64)]
    return tuple(parts)


def _find(data_dir, stem):
    for candidate in (stem + ".gz", stem):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise DataError(f"{data_dir}: missing {stem}(.gz); install `{FASHION_MNIST_APT}` or point "
                    "--data-dir at a folder with the four Fashion-MNIST IDX files")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes; errors name the file."""
    def parse(raw):
        with gzip.open(raw) if path.endswith(".gz") else contextlib.nullcontext(raw) as f:
            return f.read()

    data = read_user_file(path, parse, "an IDX file", DataError)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(shape):
        raise DataError(f"{path}: IDX header says shape {shape} but the file holds "
                        f"{len(data) - header} values; the file is truncated or corrupt")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def load_images_split(spec, image_shape, data_dir=None, on_bad_image="fail") -> FileSplit:
    """A whole ``folder:``/``list:``/``csv:`` collection as one FileSplit for a model of
    ``image_shape`` (H, W, C), independent of any run's training data; labels may be None.

    Example:
        >>> split = load_images_split("list:photos.txt", (224, 224, 3))  # doctest: +SKIP
    """
    if image_files.source_kind(spec) is None:
        raise DataError(f"--images takes folder:PATH, list:FILE (or list:DIR) or csv:FILE, "
                        f"got {spec!r}")
    collection = image_files.read_source(spec, data_dir, on_bad_image)
    return FileSplit(collection.paths, collection.labels, tuple(image_shape[:2]),
                     int(image_shape[2]), on_bad_image)


# -- from a run's config, an index's metadata, or query files ---------------------------
def images_of_index(index, ids):
    """The images of index items, loaded again from what the index records (its paths,
    or the dataset split ``index build`` encoded): (images ids.shape + (H, W, C), labels
    (ids.shape) or None, class names or None)."""
    meta = index.metadata
    ids = np.asarray(ids)
    positions = index.positions_of(ids.ravel())
    if index.paths is not None:  # built from image files: read them from their paths
        size, channels = meta.get("image_size") or [64, 64], meta.get("channels") or 3
        images = load_images([index.paths[p] for p in positions], size, channels)
        labels = index.labels
        labels = labels[positions].reshape(ids.shape) if (
            labels is not None and labels.ndim == 1) else None
        return images.reshape(*ids.shape, *images.shape[1:]), labels, None
    if not meta.get("dataset") or not meta.get("split"):
        raise DataError("the index records no dataset or image paths to draw its items "
                        "from; build it with `keras-hashing index build`")
    splits = load_dataset(meta["dataset"], protocol=meta.get("protocol"),
                          data_dir=meta.get("data_dir"), seed=meta.get("seed") or 0,
                          image_size=meta.get("image_size"), channels=meta.get("channels"),
                          unseen_fold=meta.get("unseen_fold"),
                          # an index recorded before the setting existed held validation out
                          validation=meta.get("validation") or "from-train")
    split = splits.split(meta["split"])
    if len(split) != len(index) or not np.array_equal(
            index.ids, np.arange(len(index))):
        raise DataError("the index no longer matches its dataset split (items were added or "
                        "removed); rebuild it with `keras-hashing index build`")
    # unique sorted rows: a streamed split reads them in file order, each once
    rows, where = np.unique(positions, return_inverse=True)
    images = split.subset(rows).x[where].reshape(*ids.shape, *splits.input_shape)
    labels = split.y[positions].reshape(ids.shape) if split.y.ndim == 1 else None
    return images, labels, splits.class_names


