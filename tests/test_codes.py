import numpy as np
import pytest

from keras_hashing import codes
from keras_hashing.errors import CodeLengthError


@pytest.mark.parametrize("bits", [1, 7, 8, 9, 12, 48, 64, 65, 128])
def test_pack_unpack_roundtrip(bits):
    rng = np.random.default_rng(bits)
    b = rng.integers(0, 2, size=(5, bits), dtype=np.uint8)
    packed = codes.pack_bits(b)
    assert packed.shape == (5, (bits + 7) // 8)
    np.testing.assert_array_equal(codes.unpack_bits(packed, bits), b)


def test_big_bit_order_matches_numpy_default():
    packed = codes.pack_bits([[1, 0, 0, 0, 0, 0, 0, 0, 1]])
    assert packed.tolist() == [[128, 128]]


def test_hamming_matches_brute_force():
    rng = np.random.default_rng(0)
    for bits in (5, 12, 64, 100):
        q = rng.integers(0, 2, size=(7, bits))
        d = rng.integers(0, 2, size=(11, bits))
        expected = (q[:, None, :] != d[None, :, :]).sum(-1)
        got = codes.hamming_distances(codes.pack_bits(q), codes.pack_bits(d), bits)
        np.testing.assert_array_equal(got, expected)


def test_sign_of_zero_is_one():
    assert codes.sign_to_bits([[-1.0, 0.0, 0.5]]).tolist() == [[0, 1, 1]]


@pytest.mark.parametrize("bad", [0, -3, 5000, 2.5, True, "48"])
def test_bad_bit_lengths_rejected(bad):
    with pytest.raises(CodeLengthError):
        codes.check_bits(bad)


def test_wrong_code_width_names_both_lengths():
    with pytest.raises(CodeLengthError, match="3 bytes per row but 48-bit codes take 6"):
        codes.as_packed(np.zeros((2, 3), np.uint8), 48)
    with pytest.raises(CodeLengthError, match="uint8"):
        codes.as_packed(np.zeros((2, 6), np.int32), 48)
