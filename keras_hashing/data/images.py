"""Decoding image files, and the bad-image policy.

Every image the product reads (collections streamed through tf.data, query files, the
service's uploads, the export's ``encode_bytes`` signature) is decoded by
``decode_image``, so a query's code matches its copy in an index. Bad images (missing,
unreadable, truncated, not an image, a decompression bomb) follow ``on_bad_image``:
``"fail"`` (default) stops with an error naming the file; ``"skip"`` leaves the image
out and reports its path on stderr (training) or in the command's result (encode,
index).
"""

from __future__ import annotations

import re
import sys

import numpy as np

from keras_hashing.errors import DataError
from keras_hashing.fileio import is_regular_file

BAD_IMAGE_POLICIES = ("fail", "skip")


# The marker a pipeline's assertion carries, so an error from deep inside tf.data can be
# turned back into a one-line DataError naming the file.
_BAD_IMAGE_MARK = "keras-hashing: cannot read image"


def check_policy(on_bad_image) -> str:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DataError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got "
                        f"{on_bad_image!r}")
    return on_bad_image


def warn(message: str) -> None:
    print(f"keras-hashing: warning: {message}", file=sys.stderr)


# Decompression bombs: a few MB of PNG can declare 60,000 x 60,000 pixels (10 GB decoded).
# Files declaring more than PIL's own error threshold are refused before decoding.
MAX_IMAGE_PIXELS = 2 * 89_478_485


# What decode_image reads (TensorFlow's decoders); every path accepts these and no other
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


def declared_pixels(contents):
    """Width x height that a PNG, JPEG, GIF, BMP or WebP header declares (0 for other
    formats, which the decoder refuses anyway), read from the header without decoding
    (tensor ops, for tf.data and the export's graph)."""
    import tensorflow as tf

    def number(offset, length, big_endian):
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, offset, length), tf.uint8),
                      tf.int64)
        raw = tf.ensure_shape(raw, [length])
        weights = [256 ** i for i in range(length)]
        return tf.reduce_sum(raw * tf.constant(weights[::-1] if big_endian else weights,
                                               tf.int64))

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)
        return shape[0] * shape[1]

    def webp():
        chunk = tf.strings.substr(contents, 12, 4)
        mask14 = tf.constant(0x3FFF, tf.int64)
        lossless = number(21, 4, False)
        return tf.case([
            (tf.equal(chunk, b"VP8X"),  # extended: 24-bit canvas width and height, minus 1
             lambda: (number(24, 3, False) + 1) * (number(27, 3, False) + 1)),
            (tf.equal(chunk, b"VP8 "),  # lossy: 14-bit width and height after the start code
             lambda: tf.bitwise.bitwise_and(number(26, 2, False), mask14)
             * tf.bitwise.bitwise_and(number(28, 2, False), mask14)),
            (tf.equal(chunk, b"VP8L"),  # lossless: 14-bit width and height, minus 1
             lambda: (tf.bitwise.bitwise_and(lossless, mask14) + 1)
             * (tf.bitwise.bitwise_and(tf.bitwise.right_shift(lossless, 14), mask14) + 1)),
        ], default=lambda: tf.constant(0, tf.int64), exclusive=False)

    head = tf.strings.substr(contents, 0, 8)
    return tf.case([
        (tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), b"RIFF"),
                        tf.equal(tf.strings.substr(contents, 8, 4), b"WEBP")), webp),
        (tf.equal(head, b"\x89PNG\r\n\x1a\n"),
         lambda: number(16, 4, True) * number(20, 4, True)),
        (tf.equal(tf.strings.substr(head, 0, 2), b"\xff\xd8"), jpeg),
        (tf.equal(tf.strings.substr(head, 0, 3), b"GIF"),
         lambda: number(6, 2, False) * number(8, 2, False)),
        (tf.equal(tf.strings.substr(head, 0, 2), b"BM"),
         lambda: number(18, 4, False) * tf.abs(number(22, 4, False) - tf.cast(
             number(22, 4, False) >= 2**31, tf.int64) * 2**32)),
    ], default=lambda: tf.constant(0, tf.int64), exclusive=False)


def decode_image(contents, image_size, channels):
    """Encoded bytes -> uint8 (H, W, C) resized (bilinear, antialiased when shrinking).
    A file declaring more than MAX_IMAGE_PIXELS fails (as an unreadable one does)."""
    import tensorflow as tf

    small_enough = tf.debugging.assert_less_equal(
        declared_pixels(contents), tf.constant(MAX_IMAGE_PIXELS, tf.int64),
        message="image declares too many pixels")
    with tf.control_dependencies([small_enough]):
        img = tf.cond(_decodes_in_colour_only(contents),
                      lambda: _decoded_as_rgb(contents, channels),
                      lambda: tf.io.decode_image(contents, channels=int(channels),
                                                 expand_animations=False))
    img = tf.image.resize(img, [int(image_size[0]), int(image_size[1])], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)


def _decodes_in_colour_only(contents):
    """GIF, BMP, WebP and CMYK JPEG, which TensorFlow's decoders refuse to decode to one
    channel (other JPEGs decode to grey directly: their luma, as before)."""
    import tensorflow as tf

    cmyk = tf.cond(tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8"),
                   lambda: tf.equal(tf.image.extract_jpeg_shape(contents)[2], 4),
                   lambda: tf.constant(False))
    return tf.reduce_any([tf.equal(tf.strings.substr(contents, 0, 3), b"GIF"),
                          tf.equal(tf.strings.substr(contents, 0, 2), b"BM"),
                          tf.equal(tf.strings.substr(contents, 8, 4), b"WEBP"), cmyk])


def _decoded_as_rgb(contents, channels):
    """GIF, BMP, WebP and CMYK JPEG decoded in colour; a one-channel model gets the colour
    image converted to grey (ITU-R 601 weights, tf.image.rgb_to_grayscale)."""
    import tensorflow as tf

    img = tf.io.decode_image(contents, channels=3, expand_animations=False)
    return tf.image.rgb_to_grayscale(img) if int(channels) == 1 else img


def load_images_dataset(paths_ds, image_size, channels, deterministic=True):
    """Map a dataset of (path, *extras) to (image, ok, path, *extras), in parallel.

    ``ok`` is False for a file that cannot be read or decoded (its image is zeros), so
    rows stay aligned with their labels; callers filter or fail on it. Each element is
    decoded in a one-element dataset whose errors are ignored, which catches every
    failure (missing file, permissions, truncated data, unknown format) without a
    Python round trip: on 2 cores about 2,700 vs 3,100 JPEGs/s for a plain map.
    """
    import tensorflow as tf

    shape = (int(image_size[0]), int(image_size[1]), int(channels))

    def one(path, *extras):
        good = tf.data.Dataset.from_tensors(path).map(
            lambda p: (decode_image(read_regular_file(p), image_size, channels), True))
        bad = tf.data.Dataset.from_tensors((tf.zeros(shape, tf.uint8), False))
        return good.ignore_errors().concatenate(bad).take(1).map(
            lambda img, ok: (img, ok, path, *extras))

    return paths_ds.interleave(one, cycle_length=16, block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=deterministic)


def read_regular_file(path):
    """``tf.io.read_file`` of a regular file; a named pipe, socket or device fails at once
    (tf.io.read_file would block on a pipe, beyond Ctrl-C). Remote paths (``gs://``, ...)
    are TensorFlow's to check."""
    import tensorflow as tf

    regular = tf.numpy_function(_regular_or_remote, [path], tf.bool, stateful=False)
    with tf.control_dependencies([tf.debugging.Assert(regular, ["not a regular file", path])]):
        return tf.io.read_file(path)


def _regular_or_remote(path: bytes) -> bool:
    path = path.decode("utf-8", "surrogateescape")
    return "://" in path or is_regular_file(path)


def handle_bad_images(ds, on_bad_image):
    """Drop (``skip``, reporting each path on stderr) or fail on elements with ok False."""
    import tensorflow as tf

    if check_policy(on_bad_image) == "skip":
        def keep(img, ok, path, *extras):
            def report():
                tf.print("keras-hashing: warning: skipping unreadable image", path,
                         output_stream=sys.stderr)
                return False
            return tf.cond(ok, lambda: True, report)
        return ds.filter(keep)

    def check(img, ok, path, *extras):
        with tf.control_dependencies([tf.debugging.Assert(ok, [_BAD_IMAGE_MARK, path])]):
            return (tf.identity(img), ok, path, *extras)
    return ds.map(check)


def bad_image(path) -> DataError:
    """The error for one image file that cannot be read or decoded."""
    return DataError(f"{path}: cannot read image (missing, unreadable, truncated, not an "
                     f"image, or over {MAX_IMAGE_PIXELS // 10**6} megapixels); fix or remove it, "
                     "or pass --on-bad-image skip (config on_bad_image: skip) to leave such "
                     "images out")


def bad_image_error(exc):
    """The DataError for a tf.data error raised by ``handle_bad_images``, or None."""
    text = str(exc)
    if _BAD_IMAGE_MARK not in text:
        return None
    match = re.search(re.escape(_BAD_IMAGE_MARK) + r"\] \[(.*?)\]", text)
    return bad_image(match.group(1) if match else "an image")


def check_readable(paths, ok, on_bad_image, skipped_as="skipped") -> None:
    """Apply ``on_bad_image`` to the rows whose ``ok`` is False: raise naming the first
    (``fail``) or warn with their count and an example (``skip``)."""
    ok = np.asarray(ok, bool)
    if ok.all():
        return
    bad = np.asarray(paths)[~ok] if paths is not None else ["an image"] * int((~ok).sum())
    if check_policy(on_bad_image) == "fail":
        raise bad_image(bad[0])
    warn_skipped(bad, skipped_as)


def warn_skipped(bad_paths, skipped_as="skipped") -> None:
    warn(f"{len(bad_paths)} unreadable image(s) {skipped_as}, e.g. {bad_paths[0]}")


