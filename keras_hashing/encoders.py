"""Encoders: the ``Encoder`` interface and its Keras adapter, and batch-by-batch encoding
of a split (images stream from disk through the model into codes) into arrays; index
files are built by ``keras_hashing.indexing``.

Three things encode images into packed codes, and all of them are ``Encoder``s: a
trained model in this process (``KerasEncoder``), an exported SavedModel
(``serving.export.SavedModelEncoder``) and TF Serving (``serving.client.TFServingClient``).
Only the codes (a few bytes an image) are kept, so encoding a collection of any size
needs the memory of one batch of pixels. A progress bar on stderr shows images/s and
the time left. Importing this module imports no TensorFlow.

Example:
    >>> from keras_hashing.data.datasets import load_dataset
    >>> from keras_hashing.models.methods.ssdh import SSDH
    >>> splits = load_dataset("digits")
    >>> model = SSDH(bits=16, input_shape=(8, 8, 1), num_classes=10)
    >>> codes, kept = encode_split(model, splits.query)
    >>> codes.shape, kept.all()
    ((359, 2), np.True_)
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from keras_hashing import codes as codes_lib
from keras_hashing.data.images import SUPPORTED_FORMATS
from keras_hashing.errors import DataError
from keras_hashing.pixels import check_pixels


class Encoder(Protocol):
    """Anything that turns images into packed codes (uint8 rows of ceil(bits / 8) bytes,
    ``np.packbits`` order, the format of ``HammingIndex``).

    Implemented by ``KerasEncoder``, ``serving.export.SavedModelEncoder`` and
    ``serving.client.TFServingClient``; the search service, ``RetrievalClient`` and
    ``index build`` take any of them.
    """

    bits: int

    def encode(self, images) -> np.ndarray:
        """Packed codes of uint8 images (N, H, W, C) of the encoder's input size."""

    def encode_bytes(self, blobs) -> np.ndarray:
        """Packed codes of image files' bytes (PNG, JPEG, GIF, BMP, WebP), decoded and resized
        exactly as collections are."""

    def ready(self) -> bool:
        """True once the encoder can answer (a served model may still be loading)."""


class KerasEncoder:
    """The ``Encoder`` of a HashingModel in this process. One call at a time: a Keras
    model is not shared between threads.

    Example:
        >>> from keras_hashing.models.methods.ssdh import SSDH
        >>> encoder = KerasEncoder(SSDH(bits=16, input_shape=(8, 8, 1), num_classes=10))
        >>> encoder.encode(np.zeros((3, 8, 8, 1), np.uint8)).shape
        (3, 2)
    """

    def __init__(self, model):
        self.model = model
        self.bits = model.bits
        self._lock = threading.Lock()

    def encode(self, images) -> np.ndarray:
        images = check_pixels(images, self.model.image_shape)
        with self._lock:
            return self.model.encode(images)

    def encode_bytes(self, blobs) -> np.ndarray:
        import tensorflow as tf

        from keras_hashing.data.images import decode_image

        height, width, channels = self.model.image_shape
        images = []
        for blob in blobs:
            try:
                images.append(decode_image(tf.constant(blob), (height, width), channels).numpy())
            except tf.errors.OpError:
                raise DataError(f"an image could not be decoded (formats read: "
                                f"{', '.join(SUPPORTED_FORMATS)})") from None
        return self.encode(np.stack(images))

    def ready(self) -> bool:
        return True


def readable(outputs: dict):
    """(outputs of the readable images only, the (N,) mask of which those are) from
    ``predict_arrays`` outputs (all rows are readable when there is no "ok")."""
    ok = np.asarray(outputs.get("ok", np.ones(len(outputs["bits"]), bool)), bool)
    return {k: np.asarray(v)[ok] for k, v in outputs.items() if k != "ok"}, ok


def encode_split(model, split, batch_size=256, verbose=0):
    """(packed codes, kept) of a split: codes of the readable images, and the (N,) mask
    of which images those are (all True for an in-memory split)."""
    out, kept = readable(model.predict_arrays(split, batch_size=batch_size, verbose=verbose))
    return codes_lib.pack_bits(np.asarray(out["bits"], np.uint8)), kept


def save_codes(path, codes, bits, split, kept) -> None:
    """Packed codes (with the labels and paths of the images kept) to an .npz, atomically.

    Example:
        >>> codes = np.load("q.npz")["codes"]       # doctest: +SKIP
    """
    from keras_hashing.fileio import atomic_open

    arrays = {"codes": codes, "bits": np.int64(bits)}
    if split.y is not None:
        arrays["labels"] = split.y[kept]
    if split.paths is not None:
        arrays["paths"] = split.paths[kept].astype(str)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
