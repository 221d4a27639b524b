import pytest

from keras_hashing.models.backbones import build_backbone
from keras_hashing.errors import ConfigError


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_small_cnn_fits_each_input_size(shape):
    net = build_backbone("small_cnn", shape, feature_dim=64)
    assert tuple(net.input.shape) == (None, *shape) and tuple(net.output.shape) == (None, 64)


def test_lenet_needs_16_pixels():
    assert tuple(build_backbone("lenet", (28, 28, 1)).output.shape) == (None, 256)
    with pytest.raises(ConfigError, match="at least 16x16"):
        build_backbone("lenet", (8, 8, 1))


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", (28, 28, 1))
