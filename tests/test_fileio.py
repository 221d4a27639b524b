import os

import pytest

from keras_hashing import fileio
from keras_hashing.errors import HashingError


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "a.json"
    fileio.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with fileio.atomic_open(path, "w") as f:
            f.write('{"v": 2')
            raise RuntimeError("killed midway")
    assert fileio.read_json(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]  # no temp file left behind


def test_read_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HashingError, match="bad.json: not valid JSON"):
        fileio.read_json(bad)
    with pytest.raises(HashingError, match="missing.json: file not found"):
        fileio.read_json(tmp_path / "missing.json")
