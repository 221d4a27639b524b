"""TensorFlow Datasets as streamed splits: ``tfds:NAME`` downloads and prepares as
``tfds.load`` does on a user's machine (or reads what is prepared under a data_dir), and
reads labels up front and pixels only while a pipeline runs."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from keras_hashing.data.benchmarks import CIFAR10_PROTOCOLS, cifar10_positions
from keras_hashing.data.image_files import DEFAULT_IMAGE_SIZE
from keras_hashing.data.splits import StreamedSplit, stateless_key, take_validation
from keras_hashing.errors import DataError

# decoded examples a TFDS split is shuffled among (its records are read in file order)
TFDS_SHUFFLE_WINDOW = 10_000


@dataclasses.dataclass
class TfdsSplit(StreamedSplit):
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

    def images(self):
        return _tfds_examples(self).map(lambda x, y: (x, True))

    def examples(self, shuffle=False, seed=0, epoch=0):
        ds = _tfds_examples(self, with_index=True)
        if shuffle:  # read in file order: shuffled a window at a time
            ds = _window_shuffled(ds, seed, epoch, min(len(self), TFDS_SHUFFLE_WINDOW))
        return ds


def _window_shuffled(ds, seed, epoch, window):
    """``ds`` shuffled within consecutive windows of ``window`` examples, each window by
    a permutation drawn from (seed, epoch, window number) alone: a resume after epoch e
    shuffles epoch e + 1 as the uninterrupted run did. (``Dataset.shuffle`` takes no
    seed that changes with the epoch inside a pipeline.)"""
    import tensorflow as tf

    def shuffled(number, batch):
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(batch[0])[0]),
                                                         seed=stateless_key(seed, 0, epoch,
                                                                            number))
        return tuple(tf.gather(part, order) for part in batch)

    return ds.batch(window).enumerate().map(shuffled).unbatch()


def tfds_splits(tfds_name, data_dir, rng, image_size, channels, download,
                protocol="standard", validation="from-train"):
    """Streamed splits of a TensorFlow Datasets dataset: train -> train/val/database,
    test (or validation) -> query; or, for ``tfds:cifar10``, one of the CIFAR-10
    benchmark protocols (``data.benchmarks``) over train + test. Only the labels are
    read here (images skipped)."""
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

    if protocol in CIFAR10_PROTOCOLS:
        if tfds_name.split(":")[0].split("/")[0] != "cifar10":
            raise DataError(f"the {protocol} protocol is CIFAR-10's: use --dataset "
                            f"tfds:cifar10, not tfds:{tfds_name}")
        both = whole("train+test")
        is_test = np.arange(len(both)) >= len(whole("train").y)
        positions = cifar10_positions(both.y, is_test, protocol, rng, validation)
        return ({name: both.subset(rows) for name, rows in positions.items()}, num_classes,
                names)
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
    val_idx, train_idx = take_validation(database.y, rng, validation, fraction=0.1)
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
