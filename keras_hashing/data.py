"""Datasets by name, split by the evaluation protocols of DESIGN.md.

Names:

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images); the embedded default.
* ``fashion_mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``) or ``data_dir``.
* ``tfds:NAME``: a TensorFlow Datasets dataset already prepared under ``data_dir``
  (nothing is downloaded).
* ``folder:PATH``: one sub-folder of images per class.

Images are raw pixels: uint8 arrays (N, H, W, C) in 0..255. The model rescales them,
so clients send pixels as they are. Labels are class ids (N,) or multi-hot (N, C).

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
import zlib
import struct

import numpy as np

from keras_hashing.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_APT = "apt-get update && apt-get install -y dataset-fashion-mnist"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PROTOCOLS = {
    "digits": ("digits",),
    "fashion_mnist": ("fmnist", "fmnist-reduced"),
    "tfds": ("standard",),
    "folder": ("standard",),
}


@dataclasses.dataclass
class Split:
    """Images (N, H, W, C) uint8 and labels (N,) or (N, C)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self):
        return int(self.x.shape[0])


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
        return tuple(int(s) for s in self.train.x.shape[1:])

    def summary(self) -> dict:
        return {"dataset": self.name, "protocol": self.protocol,
                **{f"num_{s}": len(getattr(self, s))
                   for s in ("train", "val", "query", "database")}}


def dataset_kind(name: str) -> str:
    if name in ("digits", "fashion_mnist"):
        return name
    for prefix in ("tfds", "folder"):
        if name.startswith(prefix + ":") and len(name) > len(prefix) + 1:
            return prefix
    raise DataError(f"unknown dataset {name!r}; use digits, fashion_mnist, tfds:NAME or "
                    "folder:PATH")


def default_protocol(name: str) -> str:
    return PROTOCOLS[dataset_kind(name)][0]


def load_dataset(name="digits", protocol=None, data_dir=None, seed=0, image_size=None,
                 channels=None) -> DatasetSplits:
    """Load a dataset by name and split it by ``protocol`` (default: the dataset's first)."""
    kind = dataset_kind(name)
    protocol = protocol or PROTOCOLS[kind][0]
    if protocol not in PROTOCOLS[kind]:
        raise DataError(f"protocol {protocol!r} does not apply to {name}; choose from "
                        f"{', '.join(PROTOCOLS[kind])}")
    rng = np.random.default_rng(seed)
    if kind == "digits":
        x, y = _load_digits()
        q_idx, db_idx = _stratified_take(y, fraction=0.2, rng=rng)
        splits = _with_validation(x, y, q_idx, db_idx, val_fraction=0.1, rng=rng)
        num_classes = 10
        class_names = [str(i) for i in range(10)]
    elif kind == "fashion_mnist":
        splits = _fashion_mnist_splits(protocol, data_dir, rng)
        num_classes = 10
        class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                       "Shirt", "Sneaker", "Bag", "Ankle boot"]
    elif kind == "tfds":
        splits, num_classes, class_names = _tfds_splits(name.split(":", 1)[1], data_dir, rng,
                                                        image_size)
    else:
        x, y, class_names = load_image_folder(name.split(":", 1)[1], image_size, channels)
        num_classes = len(class_names)
        q_idx, db_idx = _stratified_take(y, fraction=0.1, rng=rng)
        splits = _with_validation(x, y, q_idx, db_idx, val_fraction=0.1, rng=rng)
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


def _with_validation(x, y, q_idx, db_idx, val_fraction, rng):
    val_idx, train_idx = _stratified_take(y, fraction=val_fraction, rng=rng, pool=db_idx)
    return {"query": Split(x[q_idx], y[q_idx]), "database": Split(x[db_idx], y[db_idx]),
            "val": Split(x[val_idx], y[val_idx]), "train": Split(x[train_idx], y[train_idx])}


def _fashion_mnist_splits(protocol, data_dir, rng):
    x_tr, y_tr, x_te, y_te = load_fashion_mnist(data_dir)
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


def _tfds_splits(tfds_name, data_dir, rng, image_size):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for an unknown name
        raise DataError(f"tfds:{tfds_name}: unknown TensorFlow Datasets name ({e})") from None
    label_key = next((k for k in ("label", "labels") if k in builder.info.features), None)
    if label_key is None:
        raise DataError(f"tfds:{tfds_name} has no 'label' or 'labels' feature")
    feature = builder.info.features[label_key]
    multi = not hasattr(feature, "num_classes")
    num_classes = feature.feature.num_classes if multi else feature.num_classes
    names = list((feature.feature if multi else feature).names)

    def to_numpy(split):
        try:
            ds = tfds.load(tfds_name, split=split, data_dir=data_dir, download=False)
        except Exception as e:
            raise DataError(f"tfds:{tfds_name} is not prepared under {data_dir or '~'} "
                            f"(no download here): {e}") from None
        xs, ys = [], []
        for ex in tfds.as_numpy(ds):
            img = _resize(ex["image"], image_size)
            xs.append(img)
            lab = ex[label_key]
            if multi:
                hot = np.zeros(num_classes, np.uint8)
                hot[np.asarray(lab, dtype=np.int64)] = 1
                lab = hot
            ys.append(lab)
        return np.stack(xs).astype(np.uint8), np.asarray(ys).astype(
            np.uint8 if multi else np.int64)

    # Split names come from trying them: builder.info.splits is empty under
    # tfds.testing.mock_data and for some prepared-by-hand datasets.
    x_db, y_db = to_numpy("train")
    for query_split in ("test", "validation"):
        try:
            x_q, y_q = to_numpy(query_split)
            break
        except DataError:
            continue
    else:
        raise DataError(f"tfds:{tfds_name} needs a 'test' or 'validation' split besides "
                        "'train'")
    val_idx, train_idx = _stratified_take(y_db, fraction=0.1, rng=rng)
    return ({"query": Split(x_q, y_q), "database": Split(x_db, y_db),
             "val": Split(x_db[val_idx], y_db[val_idx]),
             "train": Split(x_db[train_idx], y_db[train_idx])}, num_classes, names)


def load_image_folder(path, image_size=None, channels=None):
    """Images from ``path/<class>/<image>``; returns (x uint8, y int64, class_names).

    All images are resized to ``image_size`` (default 32x32) with ``channels`` (default 3).
    A file that is not a readable image raises DataError naming it.
    """
    if not os.path.isdir(path):
        raise DataError(f"image folder {path} does not exist; folder:PATH needs one "
                        "sub-folder of images per class")
    class_names = sorted(d for d in os.listdir(path)
                         if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))
    if len(class_names) < 2:
        raise DataError(f"image folder {path} has {len(class_names)} class sub-folders; "
                        "supervised hashing needs at least 2")
    files, labels = [], []
    for label, cls in enumerate(class_names):
        for fname in sorted(os.listdir(os.path.join(path, cls))):
            if not fname.startswith("."):
                files.append(os.path.join(path, cls, fname))
                labels.append(label)
    if not files:
        raise DataError(f"image folder {path} holds no images")
    counts = np.bincount(labels, minlength=len(class_names))
    if counts.min() < 2:
        cls = class_names[int(np.argmin(counts))]
        raise DataError(f"class {cls!r} in {path} has {counts.min()} image(s); every class "
                        "needs at least 2 (similar pairs and relevant items need two)")
    x = load_images(files, image_size or (32, 32), channels or 3)
    return x, np.asarray(labels, np.int64), class_names


def load_images(paths, image_size, channels) -> np.ndarray:
    """Read image files into uint8 (N, H, W, C), resized; bad files raise DataError."""
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}.get(int(channels))
    if mode is None:
        raise DataError(f"images must have 1 or 3 channels, not {channels}")
    out = np.zeros((len(paths), int(image_size[0]), int(image_size[1]), int(channels)),
                   np.uint8)
    for i, p in enumerate(paths):
        if not str(p).lower().endswith(IMAGE_EXTENSIONS):
            raise DataError(f"{p}: not an image file (expected one of "
                            f"{', '.join(IMAGE_EXTENSIONS)}); remove it from the folder")
        try:
            with Image.open(p) as img:
                img = img.convert(mode).resize((int(image_size[1]), int(image_size[0])))
                arr = np.asarray(img, np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{p}: cannot read image ({e})") from None
        out[i] = arr.reshape(out.shape[1:])
    return out


def _resize(img, image_size):
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if image_size is None or tuple(img.shape[:2]) == tuple(image_size):
        return img
    import tensorflow as tf

    return tf.image.resize(img, image_size).numpy().round().clip(0, 255).astype(np.uint8)


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


def make_tf_dataset(split: Split, batch_size, shuffle=False, seed=0, cache=True,
                    with_index=False, augmentation=None, drop_remainder=False):
    """A batched, prefetched ``tf.data.Dataset`` of (images, labels) from a Split.

    With ``with_index`` the labels are ``{"label": y, "index": i}`` where i is the
    example's position in the split (methods that keep per-example state need it).
    ``augmentation`` (a config mapping, see AUGMENTATIONS) applies random Keras
    preprocessing layers to each batch after the cache, so every epoch sees new
    variants; the images become float32 in the same 0..255 range.
    """
    import tensorflow as tf

    if len(split) == 0:
        raise DataError("cannot build a pipeline over an empty split")
    targets = split.y
    if with_index:
        targets = {"label": split.y, "index": np.arange(len(split), dtype=np.int64)}
    ds = tf.data.Dataset.from_tensor_slices((split.x, targets))
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(min(len(split), 20000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    augment = augmentation_model(augmentation or {}, seed=seed)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
