"""The field's standard benchmark protocols: CIFAR-10's three splits, NUS-WIDE, MS-COCO
and ImageNet-100, as DeepHash-pytorch (``utils/tools.py``), HashNet, CSQ and FIRe use them.

* ``cifar10`` (over ``tfds:cifar10``, the 60,000 images of train + test): per class 100
  queries and 500 training images, the other 54,000 the database;
* ``cifar10-1``: the same queries and training images; the database is every image but
  the queries (59,000, the training images included);
* ``cifar10-2``: the 10,000 test images are the queries, the 50,000 training images the
  training split and the database.
* ``nuswide`` (21 most frequent concepts, multi-label), ``coco`` (80 categories,
  multi-label), ``imagenet100`` (100 classes): DeepHash-pytorch's ``train.txt``,
  ``test.txt`` and ``database.txt`` in a ``list:DIR``; the class count is checked against
  the lists.

These are the published tables' protocols, so by default (``validation="none"``) the
model trains on the whole standard training split for its epochs and keeps the last;
``from-train`` holds 10% of each class of it out for model selection instead. Validation
never comes from queries or database. Each protocol carries the k of its mAP@k (``PROTOCOL_K``): mAP over the whole
database for CIFAR-10 (``map_all``), @5000 for NUS-WIDE and COCO, @1000 for ImageNet-100.

Example:
    >>> cifar10_positions(np.repeat(np.arange(10), 6000), np.arange(60000) >= 50000,
    ...                   "cifar10", np.random.default_rng(0))["database"].shape
    (54000,)
"""

from __future__ import annotations

import numpy as np

from keras_hashing.data.splits import stratified_take, take_validation
from keras_hashing.errors import DataError

CIFAR10_PROTOCOLS = ("cifar10", "cifar10-1", "cifar10-2")
LIST_PROTOCOLS = {"nuswide": 21, "coco": 80, "imagenet100": 100}  # protocol -> classes
# the k of each protocol's mAP@k; None: the whole database (mAP@all)
PROTOCOL_K = {"cifar10": None, "cifar10-1": None, "cifar10-2": None,
              "nuswide": 5000, "coco": 5000, "imagenet100": 1000}
CIFAR10_QUERIES_PER_CLASS = 100
CIFAR10_TRAIN_PER_CLASS = 500
VAL_FRACTION = 0.1


def default_validation(protocol) -> str:
    """``none`` for the field's standard protocols (run as their papers ran them),
    ``from-train`` for every other protocol."""
    return "none" if protocol in PROTOCOL_K else "from-train"


def protocol_k(protocol, num_database: int) -> int:
    """The k of the protocol's mAP@k (``PROTOCOL_K``): the database size
    for an mAP@all protocol, 1000 for a protocol that names none."""
    if protocol in PROTOCOL_K:
        k = PROTOCOL_K[protocol]
        return num_database if k is None else k
    return 1000


def cifar10_positions(y, is_test, protocol: str, rng, validation="none") -> dict:
    """Positions into the 60,000 images (train then test, ``is_test`` marking the test
    ones) of each split of ``protocol``: {"query", "database", "train", "val"}, seeded
    by ``rng`` and class-balanced. Validation is 10% of each class of the training split:
    held out of it under ``validation="from-train"``, only a monitor under ``"none"``
    (the whole split trains, as the published tables do)."""
    y, is_test = np.asarray(y), np.asarray(is_test, bool)
    counts = np.bincount(y, minlength=10)
    if protocol not in CIFAR10_PROTOCOLS:
        raise DataError(f"unknown CIFAR-10 protocol {protocol!r}; choose from "
                        f"{', '.join(CIFAR10_PROTOCOLS)}")
    if len(counts) != 10 or counts.min() < CIFAR10_QUERIES_PER_CLASS + CIFAR10_TRAIN_PER_CLASS:
        raise DataError(f"the {protocol} protocol needs CIFAR-10's 10 classes with at least "
                        f"{CIFAR10_QUERIES_PER_CLASS + CIFAR10_TRAIN_PER_CLASS} images each, "
                        f"got {counts.tolist()}")
    everything = np.arange(len(y))
    if protocol == "cifar10-2":
        query, train = everything[is_test], everything[~is_test]
        database = train
    else:
        query, rest = stratified_take(y, per_class=CIFAR10_QUERIES_PER_CLASS, rng=rng)
        train, others = stratified_take(y, per_class=CIFAR10_TRAIN_PER_CLASS, rng=rng,
                                        pool=rest)
        database = others if protocol == "cifar10" else rest
    val, train = take_validation(y, rng, validation, pool=train, fraction=VAL_FRACTION)
    return {"query": np.sort(query), "database": np.sort(database), "train": np.sort(train),
            "val": np.sort(val)}


def check_list_protocol(protocol: str, num_classes: int, multi_label: bool, where) -> None:
    """Raise DataError unless the lists of ``where`` hold the protocol's class count (and
    multi-hot labels for NUS-WIDE and COCO)."""
    expected = LIST_PROTOCOLS[protocol]
    if num_classes != expected:
        raise DataError(f"the {protocol} protocol has {expected} classes but the lists in "
                        f"{where} have {num_classes}; check the lists (DeepHash-pytorch's "
                        f"data/{protocol}) or use --protocol standard")
    if protocol in ("nuswide", "coco") and not multi_label:
        raise DataError(f"the {protocol} protocol is multi-label, but the lists in {where} "
                        "give one class per image")
