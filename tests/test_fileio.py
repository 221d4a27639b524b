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


def _user_file_readers():
    """Every reader of a file a user names, as (name, suffix, read(path))."""
    from keras_hashing.data.datasets import read_idx
    from keras_hashing.data.image_files import read_csv_file, read_list_file, read_query_images
    from keras_hashing.search.index import HammingIndex
    from keras_hashing.configfile import load_yaml

    return [("npy queries", ".npy", lambda p: read_query_images([p], (8, 8, 1))),
            ("IDX", "", read_idx), ("IDX gz", ".gz", read_idx),
            ("JSON", ".json", fileio.read_json), ("YAML config", ".yaml", load_yaml),
            ("list", ".txt", read_list_file), ("CSV", ".csv", read_csv_file),
            ("index", ".khi", HammingIndex.load)]


def _npy(array, **kwargs):
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, **kwargs)
    return buf.getvalue()


def _crafted_files():
    """Files that broke readers before, or could: empty, cut short, other formats, huge
    numbers, deep nesting, pickles."""
    import gzip

    import numpy as np

    good = _npy(np.zeros((2, 8, 8, 1), np.uint8))
    return {"empty": b"", "nul bytes": b"\0" * 64, "cut npy header": good[:70],
            "npy without data": good[:128], "pickled object npy": _npy(
                np.array([{"a": 1}], dtype=object), allow_pickle=True),
            "complex npy": _npy(np.zeros((2, 8, 8, 1), np.complex64)),
            "string npy": _npy(np.array(["a", "b"])), "5,000-digit number": b"7" * 5000,
            "deep nesting": b"[" * 50000 + b"]" * 50000, "utf-16 text": "a 1\n".encode("utf-16"),
            "unclosed CSV quote": b'path,label\n"a.png,1\n', "gzip of garbage": gzip.compress(
                b"\x00\x00\x08\x03" + b"\xff" * 12), "cut gzip": gzip.compress(b"x" * 1000)[:20],
            "yaml bomb": b"a: &a [1,1,1,1,1,1,1,1,1]\n" + b"".join(
                b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((98 + i, 98 + i) + (97 + i,) * 9)
                for i in range(8))}


@pytest.mark.parametrize("name", sorted(_crafted_files()))
def test_every_user_file_reader_fails_in_one_line_on_crafted_files(tmp_path, name):
    """The one gate: whatever a reader is handed, it returns or raises a HashingError that
    names the file, never another exception."""
    content = _crafted_files()[name]
    for reader, suffix, read in _user_file_readers():
        path = tmp_path / f"input{suffix}"
        path.write_bytes(content)
        try:
            read(str(path))
        except HashingError as e:
            assert str(path) in str(e) or path.name in str(e), (reader, name, str(e))
            assert "\n" not in str(e).strip(), (reader, name)


def test_every_user_file_reader_fails_in_one_line_on_random_bytes(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    readers = _user_file_readers()

    @hypothesis.settings(max_examples=60, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.sampled_from(range(len(readers))),
                      st.one_of(st.binary(max_size=400), st.text(max_size=200).map(str.encode),
                                st.sampled_from(list(_crafted_files().values())).flatmap(
                                    lambda b: st.integers(0, max(0, len(b))).map(
                                        lambda n: b[:n]))))
    def check(which, content):
        reader, suffix, read = readers[which]
        path = tmp_path / f"fuzz{suffix}"
        path.write_bytes(content)
        try:
            read(str(path))
        except HashingError:
            pass

    check()


def test_a_folder_or_a_fifo_named_as_a_file_is_one_line(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for reader, suffix, read in _user_file_readers():
        folder = tmp_path / f"folder{suffix}"
        folder.mkdir()
        for path in (folder, fifo):
            with pytest.raises(HashingError):
                read(str(path))
