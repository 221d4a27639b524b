"""The one check of raw pixels a user or client hands over, for every encoder (numpy only).

Pixels are uint8-ranged numbers, 0..255, in (N, H, W, C) images; the model rescales them.
Every path that takes pixel arrays (``search --images x.npy``, ``Encoder.encode`` in
process or through TF Serving) passes them through ``check_pixels`` first, so a NaN, an
infinity or a value outside 0..255 is refused the same way everywhere.

Example:
    >>> check_pixels(np.zeros((2, 8, 8, 1), np.uint8), (8, 8, 1)).shape
    (2, 8, 8, 1)
    >>> check_pixels(np.full((1, 2, 2, 1), 300.0))
    Traceback (most recent call last):
    ...
    keras_hashing.errors.DataError: pixels must lie in 0..255 (raw image values), got 300.0 to 300.0
"""

from __future__ import annotations

import numpy as np

from keras_hashing.errors import DataError


def check_pixels(x, input_shape=None) -> np.ndarray:
    """Images as an (N, H, W, C) array of numeric, finite pixels in 0..255; one image of
    ``input_shape`` gains its batch axis. DataError otherwise, saying what is wrong."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"images must be numeric pixels, got dtype {x.dtype}")
    if input_shape is not None:
        if x.ndim == len(input_shape):
            x = x[None]
        if tuple(x.shape[1:]) != tuple(input_shape):
            raise DataError(f"images have shape {tuple(x.shape[1:])} but the model expects "
                            f"{tuple(input_shape)} (height, width, channels)")
    elif x.ndim != 4:
        raise DataError(f"images must be (N, H, W, C), got shape {x.shape}")
    if len(x) == 0:
        raise DataError("no images given (an empty array)")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise DataError("images contain NaN or infinite pixels")
    low, high = x.min(), x.max()
    if low < 0 or high > 255:
        raise DataError(f"pixels must lie in 0..255 (raw image values), got {low} to {high}")
    return x
