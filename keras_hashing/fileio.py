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
import errno
import json
import os
import stat
import struct
import tempfile
import zlib

from keras_hashing.errors import HashingError, OutputError


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    Use for writers that want a filename (``model.save``). ``suffix`` keeps an extension
    that such writers insist on (``.keras``).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    check_output_path(path)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create its folder ({e.strerror})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                                   suffix=f".tmp{suffix}", dir=directory)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None
    # mkstemp makes the file 0600; a written file gets the permissions of the one it
    # replaces, else the umask's, as open() would give it.
    os.chmod(tmp, _mode_for(path))
    os.close(fd)
    try:
        try:
            yield tmp
        except OSError as e:  # the writer failed on the temporary file: disk full, ...
            raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
        try:
            _fsync_file(tmp)
            os.replace(tmp, path)
        except OSError as e:  # a disk that filled up, a folder swapped for a file, ...
            raise OutputError(f"{path}: cannot write ({e.strerror})") from None
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


def check_output_path(path, inputs=(), kind=None) -> None:
    """Raise OutputError unless ``path`` can be written as a file: not a folder, not one
    of ``inputs`` (files the command reads), and, when it exists and ``kind`` is given,
    a file that ``kind(path)`` accepts as one of its own (the rest is not overwritten).

    Example:
        >>> check_output_path("/tmp")                       # doctest: +ELLIPSIS
        Traceback (most recent call last):
        keras_hashing.errors.OutputError: /tmp is a folder; give a file name
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputError(f"{path} is a folder; give a file name")
    if not os.path.lexists(path):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise OutputError(f"{path}: {parent} is not a folder")
        return
    for source in inputs:
        if os.path.exists(source) and os.path.samefile(source, path):
            raise OutputError(f"{path} is also an input of this command; write the output "
                              "to another file (inputs are never overwritten)")
    if not os.path.isfile(path):
        raise OutputError(f"{path} exists and is not a regular file; nothing is overwritten")
    if kind is not None and not kind(path):
        raise OutputError(f"{path} exists and is not a file this command writes; nothing is "
                          "overwritten (choose another name or delete it)")


def check_output_dir(path) -> None:
    """Create the folder ``path`` (and its parents) for outputs, or raise OutputError."""
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{path} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create the folder ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the folder is not writable")


_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegularFileError(OSError):
    """A path that names a pipe, socket or device where a file is read: reading it could
    block forever, so it is refused like an unreadable file (an OSError)."""


class OutputLock:
    """An exclusive, non-blocking lock that one writer of an output holds while it writes
    (the index build's work folder, an export's model folder): a second writer is refused
    in one line instead of interleaving with the first. The lock is ``flock`` on
    ``lock_path``, released by ``release()`` or when the process ends, kill -9 included,
    so a killed writer never leaves a stale lock.

    Example:
        >>> import tempfile, os
        >>> lock_path = os.path.join(tempfile.mkdtemp(), ".lock")
        >>> first = OutputLock(lock_path, "demo")
        >>> OutputLock(lock_path, "demo")
        Traceback (most recent call last):
        ...
        keras_hashing.errors.OutputError: demo is being written by another keras-hashing process; wait for it to end or choose another output
        >>> first.release()
    """

    def __init__(self, lock_path, what, remove=False):
        import fcntl

        self.path, self.remove = os.fspath(lock_path), remove
        while True:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise OutputError(f"{what}: cannot write ({e.strerror})") from None
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self._fd)
                raise OutputError(f"{what} is being written by another keras-hashing "
                                  "process; wait for it to end or choose another "
                                  "output") from None
            # A writer that finished meanwhile removed the file we locked: lock the new one
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return
            os.close(self._fd)

    def release(self) -> None:
        """Let the next writer in; with ``remove``, the lock file goes first (while still
        held, so no one locks it in between)."""
        if self._fd is not None:
            if self.remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


def open_regular(path, mode="rb", encoding=None, newline=None):
    """``open(path, mode)`` for reading, refusing what is not a regular file without
    blocking: a named pipe, socket or device raises NotRegularFileError (an OSError, so
    the caller's ``except OSError`` reports it in one line), a folder IsADirectoryError.

    The file is opened non-blocking and checked with fstat, so nothing can swap the path
    between the check and the read.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); os.mkfifo(os.path.join(d, "pipe.png"))
        >>> open_regular(os.path.join(d, "pipe.png"))
        Traceback (most recent call last):
        ...
        keras_hashing.fileio.NotRegularFileError: [Errno 22] not a regular file (a named pipe): ...
    """
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # POSIX; elsewhere a plain open
    fd = os.open(path, os.O_RDONLY | nonblocking)
    try:
        check_regular(path, os.fstat(fd).st_mode)
        if nonblocking:  # a regular file ignores the flag; clear it all the same
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode, encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        raise


def check_regular(path, mode=None) -> None:
    """Raise NotRegularFileError (IsADirectoryError for a folder) unless ``path`` (of
    ``st_mode`` ``mode``, stat-ed when None) is a regular file; a missing path raises
    FileNotFoundError."""
    mode = os.stat(path).st_mode if mode is None else mode
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    raise NotRegularFileError(errno.EINVAL, f"not a regular file ({kind})", str(path))


def is_regular_file(path) -> bool:
    """True for a regular file (symbolic links followed); False for anything else."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def file_starts_with(prefix: bytes):
    """A ``kind`` test for ``check_output_path``: files whose first bytes are ``prefix``."""
    def kind(path) -> bool:
        try:
            with open_regular(path, "rb") as f:
                return f.read(len(prefix)) == prefix
        except OSError:
            return False
    return kind


def write_text(path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# What parsing a malformed file raises, whatever the format: bad bytes or text (ValueError
# and its UnicodeDecodeError, JSONDecodeError), an early end (EOFError, struct.error), a
# wrong structure (KeyError, IndexError, TypeError), nesting past Python's stack.
PARSE_ERRORS = (ValueError, EOFError, struct.error, zlib.error, KeyError, IndexError,
                TypeError, RecursionError, OverflowError)


def read_user_file(path, parse, what="file", error=HashingError, mode="rb",
                   encoding="utf-8"):
    """``parse(f)`` over the regular file at ``path``: the one gate every file a user
    names passes. A missing, unreadable or malformed file is one ``error`` naming the file
    and what it should hold; an error the parser raises itself (a HashingError) passes.

    Example:
        >>> read_user_file("nope.json", json.load, "a JSON file")
        Traceback (most recent call last):
        ...
        keras_hashing.errors.HashingError: nope.json: file not found
    """
    try:
        text = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with open_regular(path, mode, **text) as f:
            return parse(f)
    except HashingError:
        raise
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    except PARSE_ERRORS as e:
        reason = str(e).splitlines()[0][:160] if str(e) else "the file ends early"
        raise error(f"{path}: not {what} ({type(e).__name__}: {reason})") from None


def read_json(path):
    """Read a JSON file; a missing or malformed file raises HashingError naming it."""
    return read_user_file(path, json.load, "valid JSON", mode="r")


def _mode_for(path) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # read without changing it (os.umask sets it, racing other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
