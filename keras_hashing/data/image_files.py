"""Image collections on disk: folders, list files and CSV files, streamed through tf.data.

A collection is a list of image paths with labels; nothing is decoded until a pipeline
reads it, so memory depends on the batch, never on the collection's size.

Sources (``--dataset`` / ``--images``):

* ``folder:PATH``: one sub-folder of images per class (``PATH/<class>/<image>``).
* ``list:FILE``: DeepHash-pytorch's list format, one image a line: ``path l0 l1 ...``
  where the labels are a multi-hot row (NUS-WIDE, COCO), a one-hot row (CIFAR-10, read
  as class ids) or a single class id or name. Relative paths resolve against
  ``data_dir``, else the list file's folder. ``list:DIR`` with DeepHash-pytorch's
  ``train.txt``, ``test.txt`` and ``database.txt`` uses them as the train, query and
  database splits. Fields are split on whitespace, so a path cannot hold spaces; blank
  lines and ``#`` comments are skipped.
* ``csv:FILE``: a header row with a path column (``path``, ``filename``, ``file`` or
  ``image``) and optionally a label column (``label``, ``labels``, ``class`` or
  ``classes``); several labels in one cell are separated by ``|`` or spaces
  (multi-label).

A collection's images as a split are a ``FileSplit``; bad images (missing, unreadable,
truncated, not an image) follow its ``on_bad_image`` (``keras_hashing.data.images``).

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "train.txt"), "w").write("a.jpg 0 1 1\\nb.jpg 1 0 0\\n")
    >>> c = read_list_file(os.path.join(d, "train.txt"))
    >>> [os.path.basename(p) for p in c.paths], c.labels.tolist(), c.multi_label
    (['a.jpg', 'b.jpg'], [[0, 1, 1], [1, 0, 0]], True)
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re

import numpy as np

from keras_hashing.data.images import (check_policy, handle_bad_images, load_images_dataset,
                                       warn)
from keras_hashing.data.splits import EpochOrder, StreamedSplit
from keras_hashing.errors import DataError
from keras_hashing.fileio import open_regular, read_user_file

DEFAULT_IMAGE_SIZE = (32, 32)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".jxl")
DEEPHASH_LISTS = {"train": "train.txt", "query": "test.txt", "database": "database.txt"}
PATH_COLUMNS = ("path", "filename", "file", "image")
LABEL_COLUMNS = ("label", "labels", "class", "classes")


@dataclasses.dataclass
class Collection:
    """Paths (N,) and labels: class ids (N,), multi-hot (N, C) or None (unlabelled)."""

    paths: np.ndarray
    labels: np.ndarray | None
    class_names: list | None = None

    def __len__(self):
        return len(self.paths)

    @property
    def multi_label(self) -> bool:
        return self.labels is not None and self.labels.ndim == 2

    @property
    def num_classes(self):
        if self.labels is None:
            return None
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.shape[1]) if self.multi_label else int(self.labels.max()) + 1


def source_kind(spec: str):
    """'folder', 'list' or 'csv' for a ``KIND:PATH`` spec, else None."""
    for kind in ("folder", "list", "csv"):
        if isinstance(spec, str) and spec.startswith(kind + ":") and len(spec) > len(kind) + 1:
            return kind
    return None


def read_source(spec: str, data_dir=None, on_bad_image="fail") -> Collection:
    """The whole collection of a ``folder:``, ``list:FILE`` or ``csv:FILE`` spec."""
    kind, path = source_kind(spec), spec.split(":", 1)[1]
    if kind == "folder":
        return read_folder(path, on_bad_image)
    if kind == "list":
        if os.path.isdir(path):
            parts = read_deephash_lists(path, data_dir)
            return concatenate([parts["train"], parts["database"], parts["query"]])
        return read_list_file(path, data_dir)
    if kind == "csv":
        return read_csv_file(path, data_dir)
    raise DataError(f"unknown image source {spec!r}; use folder:PATH, list:FILE or csv:FILE")


def read_folder(path, on_bad_image="fail") -> Collection:
    """Images under ``path/<class>/``, classes sorted by name; hidden files are ignored."""
    if not os.path.isdir(path):
        raise DataError(f"image folder {path} does not exist; folder:PATH needs one "
                        "sub-folder of images per class")
    class_names = sorted(d for d in os.listdir(path)
                         if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))
    if len(class_names) < 2:
        raise DataError(f"image folder {path} has {len(class_names)} class sub-folders; "
                        "supervised hashing needs at least 2")
    files, labels, others = [], [], []
    for label, cls in enumerate(class_names):
        with os.scandir(os.path.join(path, cls)) as entries:
            # is_file() follows links and is False for a pipe, socket or device: reading
            # one would block, so it counts as a file that is not an image
            names = sorted((e.name, e.is_file()) for e in entries if not e.name.startswith("."))
        for fname, regular in names:
            full = os.path.join(path, cls, fname)
            if regular and fname.lower().endswith(IMAGE_EXTENSIONS):
                files.append(full)
                labels.append(label)
            else:
                others.append(full)
    if others:
        if check_policy(on_bad_image) == "fail":
            raise DataError(f"{others[0]}: not an image file (a regular file named one of "
                            f"{', '.join(IMAGE_EXTENSIONS)}); remove it from the folder or "
                            "pass --on-bad-image skip")
        warn(f"skipping {len(others)} file(s) that are not images, e.g. {others[0]}")
    if not files:
        raise DataError(f"image folder {path} holds no images")
    return Collection(np.asarray(files, dtype=object), np.asarray(labels, np.int64), class_names)


def read_list_file(path, data_dir=None) -> Collection:
    """One image a line: ``path [labels...]`` split on whitespace (DeepHash-pytorch's
    format), so a path cannot hold spaces (a CSV can); every line has the same number of
    label fields. Blank lines and lines starting with ``#`` are skipped, and a UTF-8
    byte-order mark is ignored."""
    lines = _read_lines(path)
    base = data_dir or os.path.dirname(os.path.abspath(path))
    paths, rows = [], []
    for number, line in lines:
        fields = line.split()
        paths.append(_resolve(fields[0], base))
        rows.append(fields[1:])
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise DataError(f"{path}: lines have {sorted(widths)} label fields; every line "
                        "needs the same number (a multi-hot row, or one class)")
    width = widths.pop() if widths else 0
    if width == 0:
        return Collection(np.asarray(paths, dtype=object), None)
    if width == 1:
        return _class_column(path, paths, [r[0] for r in rows], lines)
    try:
        hot = np.asarray(rows, dtype=np.int64)
    except ValueError:
        raise DataError(f"{path}: the label fields must be 0/1 (a multi-hot row per "
                        "image)") from None
    if not np.isin(hot, (0, 1)).all():
        bad = int(np.argmax(~np.isin(hot, (0, 1)).all(axis=1)))
        raise DataError(f"{path}, line {lines[bad][0]}: labels must be 0 or 1, got "
                        f"{' '.join(rows[bad])}")
    return _hot_rows(np.asarray(paths, dtype=object), hot.astype(np.uint8))


def read_csv_file(path, data_dir=None) -> Collection:
    """A CSV with a header: a path column and optionally a label column."""
    base = data_dir or os.path.dirname(os.path.abspath(path))

    def parse(f):
        reader = csv.DictReader(f)
        try:
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            return header, [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                            for row in reader]
        except csv.Error as e:
            raise DataError(f"{path}: not a CSV file ({e})") from None

    # utf-8-sig: a byte-order mark (Excel, Notepad) is not part of the first header
    header, rows = read_user_file(path, parse, "a CSV file", DataError, "r", "utf-8-sig")
    path_col = next((c for c in PATH_COLUMNS if c in header), None)
    if path_col is None:
        raise DataError(f"{path}: no path column; the header needs one of {PATH_COLUMNS}, "
                        f"has {header}")
    label_col = next((c for c in LABEL_COLUMNS if c in header), None)
    rows = [r for r in rows if r.get(path_col)]
    if not rows:
        raise DataError(f"{path}: the CSV lists no images")
    paths = [_resolve(r[path_col], base) for r in rows]
    if label_col is None:
        return Collection(np.asarray(paths, dtype=object), None)
    cells = [r.get(label_col, "") for r in rows]
    lines = [(i + 2, c) for i, c in enumerate(cells)]
    if any(re.search(r"[|\s]", c) for c in cells):  # several labels per image
        tokens = [[t for t in re.split(r"[|\s]+", c) if t] for c in cells]
        names = sorted({t for ts in tokens for t in ts}, key=_natural_key)
        where = {n: i for i, n in enumerate(names)}
        hot = np.zeros((len(cells), len(names)), np.uint8)
        for i, ts in enumerate(tokens):
            hot[i, [where[t] for t in ts]] = 1
        return Collection(np.asarray(paths, dtype=object), hot, names)
    return _class_column(path, paths, cells, lines)


def read_deephash_lists(folder, data_dir=None) -> dict:
    """{"train", "query", "database"} collections from DeepHash-pytorch's three lists."""
    missing = [f for f in DEEPHASH_LISTS.values()
               if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(f"{folder}: a list folder needs DeepHash-pytorch's train.txt, "
                        f"test.txt and database.txt; missing {missing}")
    parts = {split: read_list_file(os.path.join(folder, name), data_dir)
             for split, name in DEEPHASH_LISTS.items()}
    shapes = {split: (None if c.labels is None else c.labels.shape[1:])
              for split, c in parts.items()}
    if len(set(shapes.values())) != 1:
        raise DataError(f"{folder}: the three lists have labels of different shapes {shapes}")
    return _same_class_ids(parts, folder)


def _same_class_ids(parts: dict, folder) -> dict:
    """Class names read from each list on its own become one id per name across all."""
    named = [c.class_names is not None for c in parts.values()]
    if not any(named):
        return parts
    if not all(named):
        raise DataError(f"{folder}: some lists label images by class name, others by id")
    names = sorted({n for c in parts.values() for n in c.class_names}, key=_natural_key)
    where = {n: i for i, n in enumerate(names)}
    out = {}
    for split, c in parts.items():
        labels = c.labels
        if labels.ndim == 1:  # names -> ids of the union (multi-hot widths already agree)
            labels = np.asarray([where[n] for n in c.class_names], np.int64)[labels]
        out[split] = Collection(c.paths, labels, names if labels.ndim == 1 else c.class_names)
    return out


def concatenate(collections) -> Collection:
    labels = [c.labels for c in collections]
    return Collection(np.concatenate([c.paths for c in collections]),
                      None if labels[0] is None else np.concatenate(labels),
                      collections[0].class_names)


def _read_lines(path):
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder; list:DIR needs train.txt, test.txt and "
                        "database.txt in it")
    # utf-8-sig: a byte-order mark (Excel, Notepad) is not part of the first path
    lines = read_user_file(path, lambda f: [(i + 1, line.strip()) for i, line in enumerate(f)],
                           "a list file", DataError, "r", "utf-8-sig")
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise DataError(f"list file {path} lists no images")
    return lines


def _resolve(p, base):
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.join(base, p)


def _natural_key(name):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _class_column(path, paths, values, lines) -> Collection:
    """Class ids from one label per image: integers are ids, anything else is a name."""
    paths = np.asarray(paths, dtype=object)
    if all(v.isdigit() for v in values):
        return Collection(paths, np.asarray([int(v) for v in values], np.int64))
    if any(not v for v in values):
        line = lines[[not v for v in values].index(True)][0]
        raise DataError(f"{path}, line {line}: an image without a label")
    names = sorted(set(values), key=_natural_key)
    where = {n: i for i, n in enumerate(names)}
    return Collection(paths, np.asarray([where[v] for v in values], np.int64), names)


def _hot_rows(paths, hot) -> Collection:
    """Multi-hot rows; rows that are all one-hot (CIFAR-10 in DeepHash-pytorch's lists)
    become class ids, so relevance and the classification terms treat them as classes."""
    if (hot.sum(axis=1) == 1).all():
        return Collection(paths, np.argmax(hot, axis=1).astype(np.int64),
                          [str(i) for i in range(hot.shape[1])])
    return Collection(paths, hot, [str(i) for i in range(hot.shape[1])])


# -- a collection's images as a split -------------------------------------------------
@dataclasses.dataclass
class FileSplit(StreamedSplit):
    """Image files (N,) with labels, decoded to ``image_size`` x ``channels`` when read."""

    # field(): a required field, though the Split base declares paths = None
    paths: np.ndarray = dataclasses.field()
    y: np.ndarray
    image_size: tuple = DEFAULT_IMAGE_SIZE
    channels: int = 3
    on_bad_image: str = "fail"

    def subset(self, indices) -> "FileSplit":
        y = None if self.y is None else self.y[indices]
        return dataclasses.replace(self, paths=self.paths[indices], y=y)

    def __len__(self):
        return len(self.paths)

    def images(self):
        import tensorflow as tf

        return load_images_dataset(
            tf.data.Dataset.from_tensor_slices(self.paths.astype(str)), self.image_size,
            self.channels).map(lambda img, ok, path: (img, ok))

    def examples(self, shuffle=False, seed=0, epoch=0):
        import tensorflow as tf

        if shuffle:  # a whole new permutation each epoch: reading files is random access
            positions = EpochOrder(len(self), seed).positions(epoch)
        else:
            positions = tf.data.Dataset.range(len(self))
        paths, labels = tf.constant(self.paths.astype(str)), tf.constant(self.y)
        ds = positions.map(lambda i: (tf.gather(paths, i), tf.gather(labels, i), i))
        # decoded in parallel but delivered in order: the order is the seed's alone
        ds = load_images_dataset(ds, self.image_size, self.channels, deterministic=True)
        ds = handle_bad_images(ds, self.on_bad_image)
        return ds.map(lambda img, ok, path, y, i: (img, y, i))


# -- query image files ---------------------------------------------------------------
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


def read_query_images(paths, shape=None):
    """Query images from image files or one .npy array: (pixels or None, encoded bytes or
    None, names). With the model's ``shape`` (H, W, C) files are decoded here; without
    it (a served model decodes them) their bytes are returned.

    Example:
        >>> read_query_images(["shoe.png"], (28, 28, 1))[2]    # doctest: +SKIP
        ['shoe.png']
    """
    if len(paths) == 1 and str(paths[0]).endswith(".npy"):
        images = read_user_file(paths[0], lambda f: np.load(f, allow_pickle=False),
                                "a .npy array of images", DataError)
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
            with open_regular(p, "rb") as f:
                blobs.append(f.read())
        except OSError as e:
            raise DataError(f"{p}: cannot read image ({e.strerror})") from None
    return None, blobs, list(paths)
