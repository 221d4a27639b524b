"""Quiet start-up: a command's stderr holds only keras-hashing's own lines.

TensorFlow's C++ side (absl) prints oneDNN, CUDA-stub and "failed call to cuInit" lines
on a machine without a GPU, whatever TF_CPP_MIN_LOG_LEVEL says, so a user's first
contact looks like a crash. ``quiet_tensorflow`` imports TensorFlow and probes its devices
with file descriptor 2 held back; should that fail, what was held back is shown.
"""

from __future__ import annotations

import contextlib
import os
import sys


def quiet_tensorflow(verbose=False) -> None:
    """Import TensorFlow quietly (unless ``verbose`` or already imported)."""
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with stderr_held_back():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe logs here
    import logging

    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


@contextlib.contextmanager
def stderr_held_back():
    """Send file descriptor 2 (C++ logs write there directly) to a temporary file;
    replay it to stderr only if the block fails."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode("utf-8", "replace"))
