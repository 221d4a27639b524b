"""Build an index file from batches of codes, resumably (numpy only, no TensorFlow).

``IndexBuilder(out, bits, fingerprint)`` appends each batch's packed codes, labels and
paths to a work folder ``OUT.partial/`` beside the index, and every few seconds records
how far it got in ``OUT.partial/state.json`` (written atomically, after the data files
are fsynced). A build killed at any moment is resumed by building again with the same
inputs: the data files are cut back to the last recorded state and encoding continues
from the next image. ``finish()`` writes the index with ``HammingIndex.save`` (temporary
file, fsync, rename) and removes the work folder, so ``OUT`` is either absent or whole.

Example:
    >>> import os, tempfile, numpy as np
    >>> out = os.path.join(tempfile.mkdtemp(), "demo.khi")
    >>> b = IndexBuilder(out, bits=8, fingerprint={"images": "demo"})
    >>> b.append(np.array([[1], [2]], np.uint8), consumed=2, labels=np.array([0, 1]),
    ...          paths=["a.jpg", "b.jpg"])
    >>> index = b.finish({"source": "demo"})
    >>> len(index), index.paths, os.path.exists(out + ".partial")
    (2, ['a.jpg', 'b.jpg'], False)
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from keras_hashing import codes as codes_lib
from keras_hashing.errors import IndexFileError, OutputError
from keras_hashing.fileio import OutputLock, check_output_path, read_json, write_json
from keras_hashing.search.index import HammingIndex
from keras_hashing.search.index_file import is_index_file

STATE = "state.json"
LOCK = ".lock"  # held by the one builder writing the work folder
FILES = {"codes": "codes.bin", "labels": "labels.bin", "paths": "paths.jsonl"}


class IndexBuilder:
    """Resumable, append-only writer of one index file.

    Args:
        out: the index file to write.
        bits: code length.
        fingerprint: JSON-able description of the inputs (run, images, count); a work
            folder left by a build of other inputs is refused, not mixed in.
        checkpoint_seconds: how often progress is made durable.
    """

    def __init__(self, out, bits, fingerprint: dict, checkpoint_seconds=5.0):
        self.out = os.fspath(out)
        self.bits = codes_lib.check_bits(bits)
        self.code_size = codes_lib.code_bytes(self.bits)
        self.work = self.out + ".partial"
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.checkpoint_seconds = checkpoint_seconds
        self._last_checkpoint = time.monotonic()
        self.state = {"fingerprint": self.fingerprint, "bits": self.bits, "consumed": 0,
                      "rows": 0, "bytes": {k: 0 for k in FILES}, "labels_shape": None,
                      "skipped": []}
        self.resumed = False
        self._files = {}
        # Only an index file may be replaced, and never the file being read.
        check_output_path(self.out, kind=is_index_file)
        fresh = not os.path.lexists(self.work)
        if os.path.lexists(self.work) and not os.path.isdir(self.work):
            raise IndexFileError(f"{self.work} exists and is not an interrupted build; move "
                                 "it away or choose another --out")
        try:
            os.makedirs(self.work, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.work}: cannot create the build folder "
                              f"({e.strerror})") from None
        # The work folder belongs to one builder: a second one at the same time is
        # refused before it reads or writes anything in it.
        self._lock = OutputLock(self._path(LOCK), self.out)
        try:
            if os.path.exists(self._path(STATE)):
                self._resume()
            elif not fresh and set(os.listdir(self.work)) - {LOCK}:
                raise IndexFileError(f"{self.work} exists and is not an interrupted build; "
                                     "move it away or choose another --out")
        except BaseException:
            self._lock.release()
            raise

    @property
    def consumed(self) -> int:
        """Input images handled so far (indexed or skipped): where to continue."""
        return int(self.state["consumed"])

    def _path(self, name):
        return os.path.join(self.work, name)

    def _resume(self):
        state = read_json(self._path(STATE))
        if not _valid_state(state):
            raise IndexFileError(f"{self._path(STATE)} is not a build state; delete "
                                 f"{self.work} to start over")
        if state.get("fingerprint") != self.fingerprint or state.get("bits") != self.bits:
            raise IndexFileError(
                f"{self.work} holds an interrupted build of other inputs (another run, "
                f"image list or code length); delete it to start over, or choose another "
                f"--out")
        for key, name in FILES.items():  # cut back anything written after the state
            path = self._path(name)
            size = os.path.getsize(path) if os.path.exists(path) else 0
            if size < state["bytes"][key]:
                raise IndexFileError(f"{path} is shorter than its recorded progress; delete "
                                     f"{self.work} to start over")
            with open(path, "ab") as f:
                f.truncate(state["bytes"][key])
        self.state = state
        self.resumed = True

    def append(self, codes, consumed: int, labels=None, paths=None, skipped=()) -> None:
        """Add packed codes (with labels and paths, one per code); ``consumed`` is the
        number of input images handled up to and including this batch."""
        codes = codes_lib.as_packed(codes, self.bits)
        n = len(codes)
        if labels is not None:
            labels = np.asarray(labels)
            shape = list(labels.shape[1:])
            if self.state["labels_shape"] is None and self.state["rows"] == 0:
                self.state["labels_shape"] = shape
            if shape != self.state["labels_shape"] or len(labels) != n:
                raise IndexFileError(f"labels of shape {labels.shape} do not match the "
                                     f"index being built ({self.state['labels_shape']})")
            raw = labels.astype(np.uint8 if labels.ndim == 2 else "<i8").tobytes()
            self._write("labels", raw)
        if paths is not None:
            if len(paths) != n:
                raise IndexFileError(f"{len(paths)} paths for {n} codes")
            self._write("paths", "".join(json.dumps(str(p), ensure_ascii=False) + "\n"
                                         for p in paths).encode("utf-8"))
        self._write("codes", np.ascontiguousarray(codes).tobytes())
        self.state["rows"] += n
        self.state["consumed"] = int(consumed)
        self.state["skipped"] += [str(p) for p in skipped]
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
            self.checkpoint()

    def _write(self, key, raw: bytes):
        if key not in self._files:
            self._files[key] = open(self._path(FILES[key]), "ab")
        self._files[key].write(raw)
        self.state["bytes"][key] += len(raw)

    def checkpoint(self) -> None:
        """Make everything appended so far durable, then record it."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        write_json(self._path(STATE), self.state)
        self._last_checkpoint = time.monotonic()

    def close(self) -> None:
        """Close the data files and let another builder have the work folder."""
        self._close_files()
        self._lock.release()

    def _close_files(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def finish(self, metadata: dict) -> HammingIndex:
        """Write the index file atomically and remove the work folder."""
        self.checkpoint()
        self._close_files()  # the lock is held until the work folder is gone
        rows = int(self.state["rows"])
        codes = np.fromfile(self._path(FILES["codes"]), np.uint8).reshape(rows, self.code_size)
        labels = None
        if self.state["bytes"]["labels"]:
            shape = self.state["labels_shape"]
            dtype = np.uint8 if shape else "<i8"
            labels = np.fromfile(self._path(FILES["labels"]), dtype).reshape(rows, *shape)
        paths = None
        if self.state["bytes"]["paths"]:
            with open(self._path(FILES["paths"]), encoding="utf-8") as f:
                paths = [json.loads(line) for line in f]
        index = HammingIndex(self.bits)
        index.add(codes, labels=labels, paths=paths)
        index.metadata = dict(metadata)
        if self.state["skipped"]:
            index.metadata["skipped_images"] = len(self.state["skipped"])
        index.save(self.out)
        shutil.rmtree(self.work, ignore_errors=True)
        self._lock.release()
        return index

    @property
    def skipped(self) -> list:
        return list(self.state["skipped"])


def _valid_state(state) -> bool:
    """Whether a state file has the fields and types a resume relies on."""
    if not isinstance(state, dict):
        return False
    sizes = state.get("bytes")
    return (isinstance(sizes, dict)
            and all(isinstance(sizes.get(k), int) and sizes[k] >= 0 for k in FILES)
            and isinstance(state.get("consumed"), int) and state["consumed"] >= 0
            and isinstance(state.get("rows"), int) and state["rows"] >= 0
            and isinstance(state.get("skipped"), list)
            and (state.get("labels_shape") is None or isinstance(state["labels_shape"], list)))
