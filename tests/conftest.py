import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


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
