"""data/images.py: one decoder for every path: every format it reads, to either channel
count, and one bomb check that reads each format's declared size before decoding."""

import io

import numpy as np
import pytest
from PIL import Image

from keras_hashing.data import images


def _encoded(fmt, mode, size=(53, 37), **kwargs):
    rng = np.random.default_rng(sum(map(ord, fmt + mode)))
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3)).astype(np.uint8))
    out = io.BytesIO()
    img.convert(mode).save(out, format=fmt, **kwargs)
    return out.getvalue()


CASES = [("PNG", m, {}) for m in ("RGB", "L", "RGBA", "LA", "P", "I;16")] + \
        [("JPEG", m, {}) for m in ("RGB", "L", "CMYK")] + \
        [("GIF", m, {}) for m in ("RGB", "L", "P")] + \
        [("BMP", m, {}) for m in ("RGB", "L")] + \
        [("WEBP", m, kw) for m in ("RGB", "L", "RGBA")
         for kw in ({"lossless": True}, {"quality": 80})] + \
        [("WEBP", "RGBA", {"quality": 80, "exif": b"Exif\x00\x00MM"})]  # the VP8X header


@pytest.mark.parametrize("fmt, mode, kwargs", CASES,
                         ids=[f"{f}-{m}-{'-'.join(kw) or 'plain'}" for f, m, kw in CASES])
def test_every_format_decodes_to_either_channel_count_and_declares_its_size(fmt, mode, kwargs):
    import tensorflow as tf

    blob = _encoded(fmt, mode, **kwargs)
    assert fmt in images.SUPPORTED_FORMATS or fmt == "JPEG"
    assert int(images.declared_pixels(tf.constant(blob))) == 53 * 37
    grey = images.decode_image(tf.constant(blob), (8, 8), 1).numpy()
    colour = images.decode_image(tf.constant(blob), (8, 8), 3).numpy()
    assert grey.shape == (8, 8, 1) and colour.shape == (8, 8, 3)
    # the grey image is the colour one seen in grey (within rounding and JPEG's own luma)
    luma = colour.astype(float) @ [0.2989, 0.587, 0.114]
    assert np.abs(grey[..., 0] - luma).max() <= 3


def _bomb(kind):
    """A small WebP whose header declares 16384 x 16384 pixels (over the limit)."""
    if kind == "VP8L":
        blob = bytearray(_encoded("WEBP", "RGB", lossless=True))
        assert blob[12:16] == b"VP8L"
        bits = int.from_bytes(blob[21:25], "little") & ~((1 << 28) - 1)
        blob[21:25] = (bits | 16383 | (16383 << 14)).to_bytes(4, "little")
    elif kind == "VP8":
        blob = bytearray(_encoded("WEBP", "RGB", quality=80))
        assert blob[12:16] == b"VP8 "
        blob[26:28] = (16383).to_bytes(2, "little")
        blob[28:30] = (16383).to_bytes(2, "little")
    else:
        blob = bytearray(_encoded("WEBP", "RGBA", quality=80, exif=b"Exif\x00\x00MM"))
        assert blob[12:16] == b"VP8X"
        blob[24:27] = (16383).to_bytes(3, "little")
        blob[27:30] = (16383).to_bytes(3, "little")
    return bytes(blob)


@pytest.mark.parametrize("kind", ["VP8L", "VP8", "VP8X"])
def test_a_webp_bomb_is_refused_from_its_header_before_decoding(kind):
    import tensorflow as tf

    blob = _bomb(kind)
    declared = int(images.declared_pixels(tf.constant(blob)))
    assert declared >= 16383 * 16383 > images.MAX_IMAGE_PIXELS
    with pytest.raises(tf.errors.InvalidArgumentError, match="declares too many pixels"):
        images.decode_image(tf.constant(blob), (8, 8), 1)


def test_a_format_pillow_reads_but_the_decoder_does_not_is_refused_alike(tmp_path):
    """TIFF: the service's header check and the decoder refuse it, naming the formats."""
    import tensorflow as tf

    from keras_hashing.serving.search_request import ClientError, image_size_of

    blob = _encoded("TIFF", "RGB")
    with pytest.raises(ClientError, match="WEBP"):
        image_size_of(blob)
    with pytest.raises(tf.errors.InvalidArgumentError):
        images.decode_image(tf.constant(blob), (8, 8), 1)
