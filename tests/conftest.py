import gzip
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Programs the tests start as subprocesses, not modules to import: --doctest-modules
# would run them at collection.
collect_ignore = ["scripts"]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    from keras_hashing.data.datasets import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short SSDH fit on digits shared by the tests that need a trained run."""
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import fit

    cfg = resolve_config(overrides={"epochs": 8, "bits": 24, "learning_rate": 0.005},
                         sets=["params.warmup_steps=60"])
    out = tmp_path_factory.mktemp("runs") / "ssdh_digits"
    return fit(cfg, out=str(out), verbose=0)


def write_idx(path, array):
    """An IDX file as Fashion-MNIST ships them (gzip, uint8)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fmnist_files(folder, train=6000, test=1500):
    """Fashion-MNIST's four files in ``folder``: random pixels, labels 0-9 in turn."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


@pytest.fixture
def fmnist_files():
    """write_fmnist_files, for a test that needs other sizes."""
    return write_fmnist_files


@pytest.fixture
def fake_fmnist(tmp_path):
    """Fashion-MNIST's files with 6,000 training and 1,500 test images of random pixels."""
    return write_fmnist_files(tmp_path)
