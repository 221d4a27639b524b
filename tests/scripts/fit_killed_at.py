"""`keras-hashing fit` that dies (os._exit, as kill -9 leaves things) at its Nth write.

Usage: fit_killed_at.py N OUT [fit arguments...]

The writes counted are every rename into place (each atomic file write), every file
or folder removal, and the start of the final evaluation. N = 0 kills nowhere and prints
the list of writes as JSON on the last line of stdout. Run by
tests/test_reliability.py::test_fit_killed_at_every_write_resumes_or_is_finished.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
N, OUT, FIT_ARGS = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
events = []


def _event(name):
    events.append(name)
    if len(events) == N:
        os._exit(137)


def _counted(fn, kind):
    def wrapper(*args, **kwargs):
        target = os.fspath(args[-1] if kind == "replace" else args[0])
        _event(f"{kind} {os.path.relpath(target, OUT)}")
        return fn(*args, **kwargs)
    return wrapper


os.replace = _counted(os.replace, "replace")
os.unlink = _counted(os.unlink, "unlink")
os.rmdir = _counted(os.rmdir, "rmdir")

from keras_hashing.cli import main as cli  # noqa: E402
from keras_hashing.training import fit as training  # noqa: E402

_evaluate = training.evaluate_model


def evaluate_model(*args, **kwargs):
    _event("evaluate")
    return _evaluate(*args, **kwargs)


training.evaluate_model = evaluate_model
code = cli.main(["fit", "--out", OUT, "--quiet", *FIT_ARGS])
print(json.dumps(events))
sys.exit(code)
