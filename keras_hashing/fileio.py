"""Atomic file writes: every file keras-hashing writes goes through here.

A write goes to a temporary file in the destination's directory, is flushed and
fsynced, then renamed over the destination (``os.replace`` is atomic on POSIX), so a
crash leaves either the old file or the new one, never a half-written file.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "metrics.json")
    >>> write_json(path, {"map_all": 0.9})
    >>> read_json(path)
    {'map_all': 0.9}
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

from keras_hashing.errors import HashingError


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    Use for writers that want a filename (``model.save``). ``suffix`` keeps an extension
    that such writers insist on (``.keras``).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}",
                               dir=directory)
    os.close(fd)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temporary file beside ``path`` for writing; rename it into place on success."""
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open writes whole files: mode must be 'w' or 'wb'")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f


def write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    """Read a JSON file; a missing or malformed file raises HashingError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise HashingError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise HashingError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise HashingError(f"{path}: cannot read ({e.strerror})") from None


def _fsync_file(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
