"""Datasets by name, split by the evaluation protocols of DESIGN.md.

Names:

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images); the embedded default.
* ``fashion_mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``) or ``data_dir``.
* ``tfds:NAME``: a TensorFlow Datasets dataset, downloaded and prepared as ``tfds.load``
  does unless ``download=False`` or it is already prepared under ``data_dir``; streamed
  from the prepared files.
* ``folder:PATH``, ``list:FILE`` (or ``list:DIR`` of DeepHash-pytorch's train.txt,
  test.txt, database.txt), ``csv:FILE``: a collection on disk (``keras_hashing.sources``),
  streamed and decoded batch by batch.

Images are raw pixels: uint8 (H, W, C) in 0..255. The model rescales them, so clients
send pixels as they are. Labels are class ids (N,) or multi-hot (N, C).

A split is held in memory (``Split``: digits, Fashion-MNIST) or streamed (``FileSplit``
for image files, ``TfdsSplit`` for TensorFlow Datasets): both have ``y``, ``len``,
``image_shape``, ``subset(indices)`` and go through ``make_tf_dataset`` and
``inference_dataset``; only labels are held in memory for a streamed one.

Every protocol yields four splits: ``train`` (fitted on), ``val`` (model selection;
carved from the training data, never the query set), ``query`` and ``database``.

Example:
    >>> splits = load_dataset("digits")
    >>> splits.input_shape, splits.num_classes, len(splits.query.y), len(splits.database.y)
    ((8, 8, 1), 10, 359, 1438)
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import re
import struct
import zlib

import numpy as np

from keras_hashing import sources
from keras_hashing.errors import DataError

# Pixels are uint8 0..255 everywhere until a model (or a pixel-space baseline) scales
# them to [0, 1] by this, the one place the factor is written.
PIXEL_SCALE = 1.0 / 255.0


def flat_pixels(images) -> np.ndarray:
    """Images (N, H, W, C) as flat float32 rows in [0, 1] (pixel-space methods)."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) * np.float32(PIXEL_SCALE)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# fmnist-unseen holds out the last two classes (Bag, Ankle boot): a fixed rule, not a
# pick of the pair that flatters a method.
FMNIST_UNSEEN_CLASSES = (8, 9)
FASHION_MNIST_APT = "apt-get update && apt-get install -y dataset-fashion-mnist"
IMAGE_EXTENSIONS = sources.IMAGE_EXTENSIONS
PROTOCOLS = {
    "digits": ("digits",),
    "fashion_mnist": ("fmnist", "fmnist-reduced", "fmnist-unseen"),
    "tfds": ("standard",),
    "folder": ("standard",),
    "list": ("standard",),
    "csv": ("standard",),
}
DEFAULT_IMAGE_SIZE = (32, 32)
# A streamed split read whole into memory (a closed-form baseline's training pixels, a
# plot) must fit comfortably; beyond this the error says what to do instead.
MAX_IN_MEMORY_BYTES = 4 << 30


@dataclasses.dataclass
class Split:
    """Images (N, H, W, C) uint8 held in memory, and labels (N,) or (N, C)."""

    x: np.ndarray
    y: np.ndarray
    in_memory = True

    def __len__(self):
        return int(self.x.shape[0])

    @property
    def image_shape(self):
        return tuple(int(s) for s in self.x.shape[1:])

    def subset(self, indices) -> "Split":
        return Split(self.x[indices], self.y[indices])


class _StreamedSplit:
    """What FileSplit and TfdsSplit share: labels in memory, pixels read on demand."""

    in_memory = False

    def __len__(self):
        return len(self.y)

    @property
    def image_shape(self):
        return (int(self.image_size[0]), int(self.image_size[1]), int(self.channels))

    @property
    def x(self) -> np.ndarray:
        """Every image of the split as one uint8 array (for what needs them all at once)."""
        need = len(self) * int(np.prod(self.image_shape))
        if need > MAX_IN_MEMORY_BYTES:
            raise DataError(f"this needs all {len(self):,} images of a split in memory "
                            f"({need / 2**30:.1f} GiB decoded); use a method that trains "
                            "by gradients, or a smaller collection or image size")
        images, ok = [], []
        for batch, good in inference_dataset(self, 256):
            images.append(np.asarray(batch))
            ok.append(np.asarray(good))
        # unreadable images (only image files have them) fail, or stay black with a warning
        sources.check_readable(getattr(self, "paths", None), np.concatenate(ok),
                               getattr(self, "on_bad_image", "fail"), "read as black")
        return np.concatenate(images)


@dataclasses.dataclass
class FileSplit(_StreamedSplit):
    """Image files (N,) with labels, decoded to ``image_size`` x ``channels`` when read."""

    paths: np.ndarray
    y: np.ndarray
    image_size: tuple = DEFAULT_IMAGE_SIZE
    channels: int = 3
    on_bad_image: str = "fail"

    def subset(self, indices) -> "FileSplit":
        y = None if self.y is None else self.y[indices]
        return dataclasses.replace(self, paths=self.paths[indices], y=y)

    def __len__(self):
        return len(self.paths)


@dataclasses.dataclass
class TfdsSplit(_StreamedSplit):
    """Rows (sorted positions) of one prepared TensorFlow Datasets split, streamed."""

    name: str
    split: str
    rows: np.ndarray
    y: np.ndarray
    label_key: str
    num_classes: int
    image_size: tuple
    channels: int
    data_dir: str | None = None

    def subset(self, indices) -> "TfdsSplit":
        # The split streams in file order, so a subset keeps its rows sorted (and its
        # labels with them): take labels from the subset, not from the parent.
        order = np.sort(np.asarray(indices, np.int64))
        return dataclasses.replace(self, rows=self.rows[order], y=self.y[order])


@dataclasses.dataclass
class DatasetSplits:
    name: str
    protocol: str
    train: Split
    val: Split
    query: Split
    database: Split
    num_classes: int
    multi_label: bool = False
    class_names: list | None = None

    @property
    def input_shape(self):
        return self.train.image_shape

    def summary(self) -> dict:
        return {"dataset": self.name, "protocol": self.protocol,
                **{f"num_{s}": len(getattr(self, s))
                   for s in ("train", "val", "query", "database")}}


def dataset_kind(name: str) -> str:
    if name in ("digits", "fashion_mnist"):
        return name
    for prefix in ("tfds", "folder", "list", "csv"):
        if name.startswith(prefix + ":") and len(name) > len(prefix) + 1:
            return prefix
    raise DataError(f"unknown dataset {name!r}; use digits, fashion_mnist, tfds:NAME, "
                    "folder:PATH, list:FILE or csv:FILE")


def default_protocol(name: str) -> str:
    return PROTOCOLS[dataset_kind(name)][0]


def load_dataset(name="digits", protocol=None, data_dir=None, seed=0, image_size=None,
                 channels=None, download=True, on_bad_image="fail") -> DatasetSplits:
    """Load a dataset by name and split it by ``protocol`` (default: the dataset's first).

    ``download`` (``tfds:`` only) fetches and prepares a dataset that is not prepared yet,
    as ``tfds.load`` does; ``on_bad_image`` (image files) is ``"fail"`` or ``"skip"``.
    """
    kind = dataset_kind(name)
    protocol = protocol or PROTOCOLS[kind][0]
    if protocol not in PROTOCOLS[kind]:
        raise DataError(f"protocol {protocol!r} does not apply to {name}; choose from "
                        f"{', '.join(PROTOCOLS[kind])}")
    rng = np.random.default_rng(seed)
    if kind == "digits":
        x, y = _load_digits()
        q_idx, db_idx = _stratified_take(y, fraction=0.2, rng=rng)
        splits = _carve(Split(x, y), q_idx, db_idx, val_fraction=0.1, rng=rng)
        num_classes = 10
        class_names = [str(i) for i in range(10)]
    elif kind == "fashion_mnist":
        splits = _fashion_mnist_splits(protocol, data_dir, rng)
        # fmnist-unseen trains on the seen classes only; its query and database keep
        # their own class ids (8, 9), which no head ever predicts.
        num_classes = 10 - len(FMNIST_UNSEEN_CLASSES) if protocol == "fmnist-unseen" else 10
        class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                       "Shirt", "Sneaker", "Bag", "Ankle boot"]
    elif kind == "tfds":
        splits, num_classes, class_names = _tfds_splits(
            name.split(":", 1)[1], data_dir, rng, image_size, channels, download)
    else:
        splits, num_classes, class_names = _file_splits(name, data_dir, rng, image_size,
                                                        channels, on_bad_image)
    result = DatasetSplits(name=name, protocol=protocol, num_classes=num_classes,
                           class_names=class_names, multi_label=splits["train"].y.ndim == 2,
                           **splits)
    for split_name in ("train", "val", "query", "database"):
        if len(getattr(result, split_name)) == 0:
            raise DataError(f"dataset {name}: split {split_name!r} is empty; it needs more "
                            "images per class")
    return result


# -- splits ------------------------------------------------------------------------------
def _stratified_take(y, fraction=None, per_class=None, rng=None, pool=None):
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


def _carve(whole, q_idx, db_idx, val_fraction, rng):
    """query / database / val / train subsets of a split (val carved from the database)."""
    val_idx, train_idx = _stratified_take(whole.y, fraction=val_fraction, rng=rng,
                                          pool=db_idx)
    return {"query": whole.subset(q_idx), "database": whole.subset(db_idx),
            "val": whole.subset(val_idx), "train": whole.subset(train_idx)}


def _file_splits(name, data_dir, rng, image_size, channels, on_bad_image):
    """Splits of a folder, list or CSV collection; nothing is decoded here."""
    sources.check_policy(on_bad_image)
    kind, path = dataset_kind(name), name.split(":", 1)[1]
    size = tuple(image_size or DEFAULT_IMAGE_SIZE)

    def as_split(c):
        if c.labels is None:
            raise DataError(f"{name}: supervised training needs labels; the list gives "
                            "only paths")
        return FileSplit(c.paths, c.labels, size, channels or 3, on_bad_image)

    if kind == "list" and os.path.isdir(path):
        parts = sources.read_deephash_lists(path, data_dir)
        train = as_split(parts["train"])
        val_idx, train_idx = _stratified_take(train.y, fraction=0.1, rng=rng)
        splits = {"query": as_split(parts["query"]), "database": as_split(parts["database"]),
                  "val": train.subset(val_idx), "train": train.subset(train_idx)}
        collection = sources.concatenate(list(parts.values()))  # every class of the three
    else:
        collection = sources.read_source(name, data_dir, on_bad_image)
        whole = as_split(collection)
        _check_class_sizes(whole.y, collection.class_names, path)
        q_idx, db_idx = _stratified_take(whole.y, fraction=0.1, rng=rng)
        splits = _carve(whole, q_idx, db_idx, val_fraction=0.1, rng=rng)
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


def _fashion_mnist_splits(protocol, data_dir, rng):
    x_tr, y_tr, x_te, y_te = load_fashion_mnist(data_dir)
    if protocol == "fmnist-unseen":
        return _unseen_class_splits(x_tr, y_tr, x_te, y_te, FMNIST_UNSEEN_CLASSES, rng)
    if protocol == "fmnist":
        # queries = test; database = all 60k training images; 500/class held out for
        # selection (still in the database, never trained on).
        val_idx, train_idx = _stratified_take(y_tr, per_class=500, rng=rng)
        return {"query": Split(x_te, y_te), "database": Split(x_tr, y_tr),
                "val": Split(x_tr[val_idx], y_tr[val_idx]),
                "train": Split(x_tr[train_idx], y_tr[train_idx])}
    # fmnist-reduced (DPSH/DSDH style): 100/class queries from test, 500/class training
    # images from train, database = the other 69,000; validation = 50/class from database
    # images that are not training images (so the 5,000 training images stay whole).
    x = np.concatenate([x_tr, x_te])
    y = np.concatenate([y_tr, y_te])
    test_pool = np.arange(len(y_tr), len(y))
    q_idx, _ = _stratified_take(y, per_class=100, rng=rng, pool=test_pool)
    db_idx = np.setdiff1d(np.arange(len(y)), q_idx)
    train_idx, _ = _stratified_take(y, per_class=500, rng=rng, pool=np.arange(len(y_tr)))
    val_idx, _ = _stratified_take(y, per_class=50, rng=rng,
                                  pool=np.setdiff1d(db_idx, train_idx))
    return {"query": Split(x[q_idx], y[q_idx]), "database": Split(x[db_idx], y[db_idx]),
            "val": Split(x[val_idx], y[val_idx]), "train": Split(x[train_idx], y[train_idx])}


def _unseen_class_splits(x_tr, y_tr, x_te, y_te, unseen, rng):
    """Retrieval of classes never seen in training (Sablayrolles et al., ICASSP 2017):
    train and validate on the other classes (500 per class of the training images held
    out for selection); queries are the test images of the ``unseen`` classes, the
    database their training images. Relevance stays "same class"."""
    seen_tr = np.flatnonzero(~np.isin(y_tr, unseen))
    val_idx, train_idx = _stratified_take(y_tr, per_class=500, rng=rng, pool=seen_tr)
    q_idx = np.flatnonzero(np.isin(y_te, unseen))
    db_idx = np.flatnonzero(np.isin(y_tr, unseen))
    return {"query": Split(x_te[q_idx], y_te[q_idx]), "database": Split(x_tr[db_idx], y_tr[db_idx]),
            "val": Split(x_tr[val_idx], y_tr[val_idx]),
            "train": Split(x_tr[train_idx], y_tr[train_idx])}


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
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
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


def _tfds_splits(tfds_name, data_dir, rng, image_size, channels, download):
    """Streamed splits of a TensorFlow Datasets dataset: train -> train/val/database,
    test (or validation) -> query. Only the labels are read here (images skipped)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for an unknown name
        raise DataError(f"tfds:{tfds_name}: unknown TensorFlow Datasets name ({e})") from None
    features = builder.info.features
    label_key = next((k for k in ("label", "labels") if k in features), None)
    if label_key is None or "image" not in features:
        raise DataError(f"tfds:{tfds_name} needs an 'image' and a 'label' or 'labels' "
                        "feature")
    feature = features[label_key]
    multi = not hasattr(feature, "num_classes")
    num_classes = feature.feature.num_classes if multi else feature.num_classes
    names = list((feature.feature if multi else feature).names)
    if download:
        prepare_tfds(builder, tfds_name, data_dir)
    shape = tuple(features["image"].shape)
    channels = int(channels or shape[-1] or 3)
    size = tuple(image_size or (shape[:2] if None not in shape[:2] else DEFAULT_IMAGE_SIZE))

    def whole(split):
        y = _tfds_labels(tfds_name, split, data_dir, label_key, multi, num_classes)
        return TfdsSplit(tfds_name, split, np.arange(len(y)), y, label_key, num_classes,
                         size, channels, data_dir)

    # Split names come from trying them: builder.info.splits is empty under
    # tfds.testing.mock_data and for some prepared-by-hand datasets.
    database = whole("train")
    for query_split in ("test", "validation"):
        try:
            query = whole(query_split)
            break
        except DataError:
            continue
    else:
        raise DataError(f"tfds:{tfds_name} needs a 'test' or 'validation' split besides "
                        "'train'")
    val_idx, train_idx = _stratified_take(database.y, fraction=0.1, rng=rng)
    return ({"query": query, "database": database, "val": database.subset(val_idx),
             "train": database.subset(train_idx)}, num_classes, names)


def prepare_tfds(builder, tfds_name, data_dir) -> None:
    """Download and prepare as ``tfds.load(download=True)`` does (a no-op once prepared);
    a download that cannot happen is one DataError naming what to fetch and where."""
    try:
        builder.download_and_prepare()
    except Exception as e:  # network errors come wrapped in several types
        text = " ".join(str(e).split())
        url = re.search(r"https?://[^\s'\")]+", text)
        host = re.search(r"host='([^']+)'.*?url: (/\S+?)[ )]", text)
        where = url.group(0) if url else (f"https://{host.group(1)}{host.group(2)}" if host
                                          else "its source")
        target = builder.data_dir if hasattr(builder, "data_dir") else data_dir
        raise DataError(
            f"tfds:{tfds_name}: cannot download {where} ({type(e).__name__}: {text[:160]}); "
            f"on a machine with internet run `tfds build {tfds_name} --data_dir DIR` and "
            f"copy DIR here with --data-dir DIR (it would be prepared in {target}), or put "
            "the downloaded files in DIR/downloads/manual") from None


def _tfds_load(name, split, data_dir, **kwargs):
    import tensorflow_datasets as tfds

    try:
        return tfds.load(name, split=split, data_dir=data_dir, download=False,
                         shuffle_files=False, **kwargs)
    except Exception as e:
        raise DataError(f"tfds:{name}: split {split!r} is not prepared under "
                        f"{data_dir or '~/tensorflow_datasets'}: {e}") from None


def _tfds_label_map(label_key, multi, num_classes):
    import tensorflow as tf

    def label(ex):
        lab = ex[label_key]
        if multi:
            return tf.reduce_max(tf.one_hot(tf.cast(lab, tf.int32), num_classes,
                                            dtype=tf.uint8), axis=0)
        return tf.cast(lab, tf.int64)
    return label


def _tfds_labels(name, split, data_dir, label_key, multi, num_classes) -> np.ndarray:
    import tensorflow_datasets as tfds

    ds = _tfds_load(name, split, data_dir, decoders={"image": tfds.decode.SkipDecoding()})
    parts = [np.asarray(b) for b in ds.map(_tfds_label_map(label_key, multi, num_classes))
             .batch(8192).as_numpy_iterator()]
    if not parts:
        raise DataError(f"tfds:{name}: split {split!r} is empty")
    return np.concatenate(parts)


def _tfds_examples(split: TfdsSplit, with_index=False):
    """(image uint8 resized, label[, position in the split]) of a TfdsSplit, in order."""
    import tensorflow as tf

    mask = np.zeros(int(split.rows.max()) + 1 if len(split.rows) else 0, bool)
    mask[split.rows] = True
    n = len(mask)
    mask_t = tf.constant(mask)
    label = _tfds_label_map(split.label_key, split.y.ndim == 2, split.num_classes)
    ds = _tfds_load(split.name, split.split, split.data_dir).enumerate()
    ds = ds.filter(lambda i, ex: tf.logical_and(i < n, tf.gather(mask_t, tf.minimum(i, n - 1))))

    def image(ex):
        img = ex["image"]
        if img.shape.rank == 2:
            img = img[..., None]
        if split.channels == 3 and img.shape[-1] == 1:
            img = tf.image.grayscale_to_rgb(img)
        elif split.channels == 1 and img.shape[-1] == 3:
            img = tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(img, tf.float32))),
                          tf.uint8)
        if tuple(img.shape[:2]) != tuple(split.image_size):
            img = tf.image.resize(img, split.image_size, antialias=True)
            img = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
        return tf.ensure_shape(tf.cast(img, tf.uint8), split.image_shape)

    ds = ds.map(lambda i, ex: (image(ex), label(ex)), num_parallel_calls=tf.data.AUTOTUNE)
    if with_index:
        ds = ds.enumerate().map(lambda i, ex: (ex[0], ex[1], i))
    return ds


def load_images(paths, image_size, channels) -> np.ndarray:
    """Read a few image files (queries) into uint8 (N, H, W, C), decoded and resized exactly
    as collections are (so a query's code matches its copy in an index); a file that is
    not an image raises DataError naming it.
    """
    if int(channels) not in (1, 3):
        raise DataError(f"images must have 1 or 3 channels, not {channels}")
    for p in paths:
        if not str(p).lower().endswith(IMAGE_EXTENSIONS):
            raise DataError(f"{p}: not an image file (expected one of "
                            f"{', '.join(IMAGE_EXTENSIONS)}); remove it from the folder")
    if not len(paths):
        return np.zeros((0, int(image_size[0]), int(image_size[1]), int(channels)), np.uint8)
    return FileSplit(np.asarray([str(p) for p in paths], dtype=object), None,
                     tuple(image_size), int(channels)).x


def check_images(x, input_shape) -> np.ndarray:
    """Validate images for a model of ``input_shape``; returns them as an array.

    Accepts uint8 pixels (0..255) or float pixels in the same range; NaN/inf raise.
    """
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"images must be numeric pixels, got dtype {x.dtype}")
    if x.ndim == len(input_shape):
        x = x[None]
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"images have shape {tuple(x.shape[1:])} but the model expects "
                        f"{tuple(input_shape)} (height, width, channels)")
    if len(x) == 0:
        raise DataError("no images given (an empty array)")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise DataError("images contain NaN or infinite pixels")
    return x


# -- tf.data ------------------------------------------------------------------------------
# config ``augmentation`` keys -> Keras preprocessing layer (value: its strength)
AUGMENTATIONS = {
    "flip": "RandomFlip",                # "horizontal", "vertical", "horizontal_and_vertical"
    "rotation": "RandomRotation",        # fraction of a full turn, e.g. 0.05
    "translation": "RandomTranslation",  # fraction of height and width, e.g. 0.1
    "zoom": "RandomZoom",                # fraction, e.g. 0.1
    "contrast": "RandomContrast",        # factor, e.g. 0.2
}


def check_augmentation(spec) -> dict:
    """Validate a config ``augmentation`` mapping; raise DataError naming what is valid."""
    if not isinstance(spec, dict):
        raise DataError(f"augmentation must be a mapping, got {spec!r}")
    unknown = sorted(set(spec) - set(AUGMENTATIONS))
    if unknown:
        raise DataError(f"unknown augmentation(s) {unknown}; valid: {sorted(AUGMENTATIONS)}")
    for key, value in spec.items():
        if key == "flip":
            if value not in ("horizontal", "vertical", "horizontal_and_vertical"):
                raise DataError(f"augmentation flip must be horizontal, vertical or "
                                f"horizontal_and_vertical, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise DataError(f"augmentation {key} must be a number in (0, 1), got {value!r}")
    return spec


def augmentation_model(spec: dict, seed=0):
    """A Keras Sequential of the random layers of ``spec`` (in its order), or None.

    Example:
        >>> augmentation_model({"translation": 0.1, "zoom": 0.1}).layers[0].name
        'aug_translation'
    """
    import keras

    check_augmentation(spec)
    if not spec:
        return None
    layers = []
    for i, (key, value) in enumerate(spec.items()):
        cls = getattr(keras.layers, AUGMENTATIONS[key])
        args = (value, value) if key == "translation" else (value,)
        layers.append(cls(*args, seed=seed + i, name=f"aug_{key}"))
    return keras.Sequential(layers, name="augmentation")


def make_tf_dataset(split, batch_size, shuffle=False, seed=0, cache=True,
                    with_index=False, augmentation=None, drop_remainder=False):
    """A batched, prefetched ``tf.data.Dataset`` of (images, labels) from a split.

    With ``with_index`` the labels are ``{"label": y, "index": i}`` where i is the
    example's position in the split (methods that keep per-example state need it).
    ``augmentation`` (a config mapping, see AUGMENTATIONS) applies random Keras
    preprocessing layers to each batch after the cache, so every epoch sees new
    variants; the images become float32 in the same 0..255 range. A streamed split
    (image files, TFDS) is never cached: its file names are shuffled, decoded in
    parallel and batched, so memory depends on the batch only.
    """
    import tensorflow as tf

    if len(split) == 0:
        raise DataError("cannot build a pipeline over an empty split")
    if split.in_memory:
        targets = split.y
        if with_index:
            targets = {"label": split.y, "index": np.arange(len(split), dtype=np.int64)}
        ds = tf.data.Dataset.from_tensor_slices((split.x, targets))
        if cache:
            ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(min(len(split), 20000), seed=seed, reshuffle_each_iteration=True)
    else:
        ds = _streamed_examples(split, shuffle, seed)
        if with_index:
            ds = ds.map(lambda x, y, i: (x, {"label": y, "index": i}))
        else:
            ds = ds.map(lambda x, y, i: (x, y))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    augment = augmentation_model(augmentation or {}, seed=seed)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _streamed_examples(split, shuffle, seed):
    """Unbatched (image, label, position) of a FileSplit or TfdsSplit."""
    import tensorflow as tf

    if isinstance(split, TfdsSplit):
        ds = _tfds_examples(split, with_index=True)
        if shuffle:
            ds = ds.shuffle(min(len(split), 10000), seed=seed, reshuffle_each_iteration=True)
        return ds
    positions = np.arange(len(split), dtype=np.int64)
    if shuffle:  # one fixed permutation, then a bounded buffer reshuffled every epoch
        positions = np.random.default_rng(seed).permutation(positions)
    ds = tf.data.Dataset.from_tensor_slices(
        (split.paths[positions].astype(str), split.y[positions], positions))
    if shuffle:
        ds = ds.shuffle(min(len(split), sources.SHUFFLE_BUFFER), seed=seed,
                        reshuffle_each_iteration=True)
    ds = sources.load_images_dataset(ds, split.image_size, split.channels,
                                     deterministic=not shuffle)
    ds = sources.handle_bad_images(ds, split.on_bad_image)
    return ds.map(lambda img, ok, path, y, i: (img, y, i))


def inference_dataset(split, batch_size):
    """Batches of (images, ok) of a split, in order, for encoding; ``ok`` is False for an
    image file that could not be read (its pixels are zeros)."""
    import tensorflow as tf

    if split.in_memory:
        return tf.data.Dataset.from_tensor_slices(split.x).batch(batch_size).map(
            lambda x: (x, tf.ones(tf.shape(x)[:1], tf.bool)))
    if isinstance(split, TfdsSplit):
        ds = _tfds_examples(split).map(lambda x, y: (x, True))
    else:
        ds = sources.load_images_dataset(
            tf.data.Dataset.from_tensor_slices(split.paths.astype(str)), split.image_size,
            split.channels).map(lambda img, ok, path: (img, ok))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_images_split(spec, image_shape, data_dir=None, on_bad_image="fail") -> FileSplit:
    """A whole ``folder:``/``list:``/``csv:`` collection as one FileSplit for a model of
    ``image_shape`` (H, W, C), independent of any run's training data; labels may be None.

    Example:
        >>> split = load_images_split("list:photos.txt", (224, 224, 3))  # doctest: +SKIP
    """
    if sources.source_kind(spec) is None:
        raise DataError(f"--images takes folder:PATH, list:FILE (or list:DIR) or csv:FILE, "
                        f"got {spec!r}")
    collection = sources.read_source(spec, data_dir, on_bad_image)
    return FileSplit(collection.paths, collection.labels, tuple(image_shape[:2]),
                     int(image_shape[2]), on_bad_image)


# -- from a run's config, an index's metadata, or query files ---------------------------
def load_splits(cfg: dict) -> "DatasetSplits":
    """The splits a resolved config trains and evaluates on."""
    return load_dataset(cfg["dataset"], protocol=cfg["protocol"], data_dir=cfg["data_dir"],
                        seed=cfg["seed"], image_size=resolved_image_size(cfg),
                        channels=cfg["channels"], download=cfg.get("download", True),
                        on_bad_image=cfg.get("on_bad_image", "fail"))


def resolved_image_size(cfg: dict):
    """cfg's image_size; for image files under an ImageNet backbone, 224 x 224."""
    from keras_hashing.backbones import application_name
    from keras_hashing.sources import source_kind

    if cfg["image_size"] or not application_name(cfg["backbone"]):
        return cfg["image_size"]
    return [224, 224] if source_kind(cfg["dataset"]) else None


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
                          image_size=meta.get("image_size"), channels=meta.get("channels"))
    split = getattr(splits, meta["split"], None)
    if split is None or len(split) != len(index) or not np.array_equal(
            index.ids, np.arange(len(index))):
        raise DataError("the index no longer matches its dataset split (items were added or "
                        "removed); rebuild it with `keras-hashing index build`")
    # unique sorted rows: a streamed split reads them in file order, each once
    rows, where = np.unique(positions, return_inverse=True)
    images = split.subset(rows).x[where].reshape(*ids.shape, *splits.input_shape)
    labels = split.y[positions].reshape(ids.shape) if split.y.ndim == 1 else None
    return images, labels, splits.class_names


def read_query_images(paths, shape=None):
    """Query images from image files or one .npy array: (pixels or None, encoded bytes or
    None, names). With the model's ``shape`` (H, W, C) files are decoded here; without
    it (a served model decodes them) their bytes are returned.

    Example:
        >>> read_query_images(["shoe.png"], (28, 28, 1))[2]    # doctest: +SKIP
        ['shoe.png']
    """
    if len(paths) == 1 and str(paths[0]).endswith(".npy"):
        try:
            images = np.load(paths[0], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{paths[0]}: cannot read a .npy array of images ({e})") from None
        if images.size == 0 or images.ndim == 0 or (images.ndim < 3 and
                                                    images.dtype.kind in "biuf"):
            raise DataError(f"{paths[0]}: holds no images (an array of shape "
                            f"{images.shape}; give (N, H, W, C) pixels)")
        if images.ndim == 3 and shape is not None and len(shape) == 3:
            images = images[None]
        return images, None, [f"{paths[0]}[{i}]" for i in range(len(images))]
    if shape is not None:
        return load_images(paths, shape[:2], shape[2]), None, list(paths)
    blobs = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                blobs.append(f.read())
        except OSError as e:
            raise DataError(f"{p}: cannot read image ({e.strerror})") from None
    return None, blobs, list(paths)
