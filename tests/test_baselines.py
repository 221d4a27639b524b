import numpy as np
import pytest

from keras_hashing.models import baselines
from keras_hashing.codes import unpack_bits
from keras_hashing.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def features(digits):
    return digits.train.x.reshape(len(digits.train), -1) / 255.0


def test_itq_rotation_lowers_quantisation_loss(features):
    itq = baselines.ITQ(bits=16, seed=0).fit(features)
    loss = itq.quantization_loss_
    assert len(loss) == 50 and loss[-1] < loss[0]
    assert all(b <= a + 1e-6 for a, b in zip(loss, loss[1:]))  # alternation never worsens
    r = itq.rotation_
    np.testing.assert_allclose(r @ r.T, np.eye(16), atol=1e-8)


def test_pcah_uses_orthonormal_principal_directions(features):
    w, c = baselines.PCAH(bits=8).fit(features).projection()
    np.testing.assert_allclose(w.T @ w, np.eye(8), atol=1e-8)
    # centred data: bits are sign((x - mean) W)
    est = baselines.PCAH(bits=8).fit(features)
    expected = ((features - features.mean(0)) @ est.weights_ >= 0).astype(np.uint8)
    np.testing.assert_array_equal(unpack_bits(est.encode(features), 8), expected)


def test_lsh_is_reproducible_by_seed(features):
    a = baselines.LSH(bits=12, seed=3).fit(features).encode(features)
    b = baselines.LSH(bits=12, seed=3).fit(features).encode(features)
    c = baselines.LSH(bits=12, seed=4).fit(features).encode(features)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="needs at least 80 feature dimensions"):
        baselines.ITQ(bits=80).fit(np.random.default_rng(0).normal(size=(100, 64)))
    with pytest.raises(DataError, match="NaN"):
        baselines.LSH(bits=8).fit(np.full((4, 3), np.nan))


@pytest.mark.parametrize("method", ["lsh", "pcah", "itq"])
def test_baselines_behind_the_hashing_model_api(method, digits, tmp_path):
    from keras_hashing.training.config import resolve_config
    from keras_hashing.serving.export import SavedModelEncoder, export_run
    from keras_hashing.runs import load_run
    from keras_hashing.training.fit import fit

    run = fit(resolve_config(overrides={"method": method, "bits": 16}), out=str(tmp_path / "r"),
              verbose=0)
    q = run.metrics["query"]
    # chance is about 0.1; lowest over seeds 0-2, oneDNN on and off (tools/quality_spread.py):
    # lsh 0.326, pcah 0.332, itq 0.620
    assert q["map_all"] > 0.2, q["map_all"]
    assert run.metrics["validation"]["best_map_all"] > 0.2
    est = baselines.BASELINES[method](16).fit(digits.train.x.reshape(len(digits.train), -1)
                                              / 255.0)
    model = load_run(run.path).model
    x = digits.query.x[:50]
    np.testing.assert_array_equal(model.encode(x), est.encode(x.reshape(50, -1) / 255.0))
    enc = SavedModelEncoder(export_run(run.path, base=str(tmp_path / "sm"), name=method))
    np.testing.assert_array_equal(enc.encode(x), model.encode(x))


def test_baselines_refuse_an_untrained_cnn_backbone(tmp_path):
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import fit

    cfg = resolve_config(overrides={"method": "itq", "bits": 8}, sets=["backbone=small_cnn"])
    with pytest.raises(ConfigError, match="would be untrained"):
        fit(cfg, out=str(tmp_path / "r"), verbose=0)
    assert not (tmp_path / "r").exists()


def test_itq_on_a_trained_runs_features(trained_run, digits, tmp_path):
    """--features-from: ITQ of the source backbone's features, in a self-contained file."""
    import shutil

    from keras_hashing.training.config import resolve_config
    from keras_hashing.serving.export import SavedModelEncoder, export_run
    from keras_hashing.runs import load_run
    from keras_hashing.training.fit import fit

    source = tmp_path / "source"
    shutil.copytree(trained_run.path, source)
    run = fit(resolve_config(overrides={"method": "itq", "bits": 16,
                                        "features_from": str(source)}),
              out=str(tmp_path / "itq"), verbose=0)
    backbone = trained_run.model.backbone

    def features(images):
        return np.asarray(backbone(np.asarray(images, np.float32) / 255.0, training=False))

    est = baselines.ITQ(16).fit(features(digits.train.x))
    x = digits.query.x[:50]
    shutil.rmtree(source)  # the baseline's file must not need its source any more
    model = load_run(run.path).model
    np.testing.assert_array_equal(model.encode(x), est.encode(features(x)))
    assert not model.backbone.trainable
    assert run.config["features_from"] == str(source)
    enc = SavedModelEncoder(export_run(run.path, base=str(tmp_path / "sm"), name="itq"))
    np.testing.assert_array_equal(enc.encode(x), model.encode(x))


@pytest.mark.parametrize("method,source,match", [
    ("dsh", "run", "closed-form baselines"),
    ("itq", "missing", "does not exist"),
])
def test_features_from_bad_input(method, source, match, trained_run, tmp_path):
    from keras_hashing.training.config import resolve_config
    from keras_hashing.errors import HashingError
    from keras_hashing.training.fit import fit

    path = trained_run.path if source == "run" else str(tmp_path / "nowhere")
    cfg = resolve_config(overrides={"method": method, "bits": 8, "features_from": path})
    with pytest.raises(HashingError, match=match):
        fit(cfg, out=str(tmp_path / "r"), verbose=0)
    assert not (tmp_path / "r").exists()
