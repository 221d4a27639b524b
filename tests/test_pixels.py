"""keras_hashing/pixels.py: one check of raw pixels, the same refusal on every encoder."""

import numpy as np
import pytest

from keras_hashing.errors import DataError, HashingError
from keras_hashing.pixels import check_pixels

BAD_PIXELS = [
    ("NaN", np.full((1, 8, 8, 1), np.nan, np.float32), "NaN"),
    ("infinity", np.full((1, 8, 8, 1), np.inf), "NaN or infinite"),
    ("negative", np.full((1, 8, 8, 1), -1.0), "0..255"),
    ("past 255", np.full((1, 8, 8, 1), 256, np.int32), "0..255"),
    ("huge float", np.full((1, 8, 8, 1), 1e30), "0..255"),
    ("complex", np.zeros((1, 8, 8, 1), np.complex64), "numeric"),
    ("booleans", np.zeros((1, 8, 8, 1), bool), "numeric"),
    ("strings", np.full((1, 8, 8, 1), "a"), "numeric"),
    ("empty", np.zeros((0, 8, 8, 1), np.uint8), "no images"),
    ("wrong shape", np.zeros((2, 28, 28, 1), np.uint8), r"model expects \(8, 8, 1\)"),
]


@pytest.mark.parametrize("name, pixels, message", BAD_PIXELS, ids=[c[0] for c in BAD_PIXELS])
def test_bad_pixels_are_refused(name, pixels, message):
    with pytest.raises(DataError, match=message):
        check_pixels(pixels, (8, 8, 1))


def test_good_pixels_pass_unchanged_and_one_image_gains_its_batch_axis():
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(check_pixels(x, (8, 8, 1)), x)
    assert check_pixels(x[0], (8, 8, 1)).shape == (1, 8, 8, 1)
    assert check_pixels(np.full((1, 2, 2, 3), 255, np.uint8)).shape == (1, 2, 2, 3)


def test_every_encoder_refuses_bad_pixels_alike(trained_run, tmp_path):
    """In process and through TF Serving (a stand-in held to its REST handler): the same
    one-line refusal, before anything is encoded or sent."""
    from tf_serving_stub import TFServingStub

    from keras_hashing.encoders import KerasEncoder
    from keras_hashing.serving.client import TFServingClient
    from keras_hashing.serving.export import export_run

    export_run(trained_run.path, base=str(tmp_path), name="digits")
    with TFServingStub(str(tmp_path)) as tfs:
        served = TFServingClient(tfs.url, "digits")
        sent = tfs.requests
        for name, pixels, message in BAD_PIXELS[:5]:
            for encoder in (KerasEncoder(trained_run.model), served):
                with pytest.raises(HashingError, match=message):
                    encoder.encode(pixels)
        assert tfs.requests == sent  # refused before any request
        good = np.zeros((2, 8, 8, 1), np.uint8)
        np.testing.assert_array_equal(served.encode(good),
                                      KerasEncoder(trained_run.model).encode(good))
