"""SH-BDNN / UH-BDNN (B table, B steps) and DMRH (regions) beyond the shared fit tests."""

import numpy as np
import pytest

from keras_hashing import evaluation
from keras_hashing.errors import ConfigError
from keras_hashing.models.methods.bdnn import SHBDNN, UHBDNN, dcc_b_step, hidden_sizes
from keras_hashing.models.methods.dmrh import DMRH, grid_cells


def _uh_objective(b, h, x, w, c, lambda2):
    return ((x - b @ w - c) ** 2).sum() + lambda2 * ((h - b) ** 2).sum()


def test_dcc_b_step_never_raises_the_objective_and_ends_coordinate_optimal():
    rng = np.random.default_rng(0)
    h, w, c = rng.normal(size=(30, 6)), rng.normal(size=(6, 10)), rng.normal(size=10)
    x = rng.normal(size=(30, 10))
    b0 = np.where(rng.normal(size=(30, 6)) >= 0, 1.0, -1.0)
    b1 = dcc_b_step(h, x, w, c, 0.5, b0, sweeps=1)
    b = dcc_b_step(h, x, w, c, 0.5, b1, sweeps=20)
    objective = [_uh_objective(v, h, x, w, c, 0.5) for v in (b0, b1, b)]
    assert objective[0] >= objective[1] >= objective[2]
    for i in range(30):  # no single bit flip improves any example any more
        base = _uh_objective(b[i:i + 1], h[i:i + 1], x[i:i + 1], w, c, 0.5)
        for k in range(6):
            flipped = b[i:i + 1].copy()
            flipped[0, k] *= -1
            assert _uh_objective(flipped, h[i:i + 1], x[i:i + 1], w, c, 0.5) >= base - 1e-9


def test_hidden_sizes_follow_the_authors_table():
    assert hidden_sizes(12) == (90, 30) and hidden_sizes(32) == (120, 50)
    assert hidden_sizes(48) == (192, 68)


def test_b_table_starts_as_itq_and_sh_b_step_is_sign_of_h(digits):
    model = SHBDNN(bits=16, input_shape=digits.input_shape, num_classes=10,
                   backbone="flatten", params={"num_train": len(digits.train)})
    model.before_fit(digits, seed=0)
    b = model.b_table.numpy()
    assert set(np.unique(b)) == {-1, 1}
    assert np.all(np.abs(b.mean(axis=0)) < 0.6)  # ITQ codes are roughly balanced
    flipped = model.b_step(digits.train.x)
    h = model.embed(digits.train.x)
    np.testing.assert_array_equal(model.b_table.numpy(), np.where(h >= 0, 1, -1))
    assert flipped == pytest.approx(np.mean(b != model.b_table.numpy()))


def test_uh_bdnn_b_step_lowers_its_objective(digits):
    model = UHBDNN(bits=8, input_shape=digits.input_shape, num_classes=10,
                   params={"num_train": len(digits.train)})
    model.before_fit(digits, seed=0)
    x, h = model.pixels(digits.train.x), model.embed(digits.train.x)
    w, c = (np.asarray(v, np.float64) for v in model.decoder.get_weights())
    before = _uh_objective(model.b_table.numpy().astype(float), h, x, w, c, 0.05)
    model.b_step(digits.train.x)
    after = _uh_objective(model.b_table.numpy().astype(float), h, x, w, c, 0.05)
    assert after < before


def test_uh_bdnn_is_scored_with_euclidean_ground_truth(short_uh_run):
    q = short_uh_run.metrics["query"]
    assert q["euclidean_k"] == round(0.02 * q["num_database"]) < 1000  # 2% of a small db
    assert 0.3 < q["map_all_euclidean"] <= 1.0


@pytest.fixture(scope="module")
def short_uh_run(tmp_path_factory):
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import fit

    cfg = resolve_config(overrides={"method": "uh-bdnn", "epochs": 2, "bits": 16},
                         sets=["val_database_size=600", "tensorboard_samples=50"])
    return fit(cfg, out=str(tmp_path_factory.mktemp("uh") / "run"), verbose=0)


def test_b_table_survives_the_model_file(short_uh_run):
    from keras_hashing.runs import load_run

    loaded = load_run(short_uh_run.path).model
    np.testing.assert_array_equal(loaded.b_table.numpy(), short_uh_run.model.b_table.numpy())


def test_euclidean_neighbours_match_brute_force():
    rng = np.random.default_rng(4)
    q, d = rng.normal(size=(7, 5)), rng.normal(size=(50, 5))
    got = evaluation.euclidean_neighbours(q, d, k=6, chunk_elements=100)
    full = ((q[:, None, :] - d[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(got, np.argsort(full, axis=1)[:, :6])


def test_grid_cells_cover_the_side_adaptively():
    assert grid_cells(4, 1) == [(0, 4)]
    assert grid_cells(4, 2) == [(0, 2), (2, 4)]
    assert grid_cells(7, 3) == [(0, 3), (2, 5), (4, 7)]


def test_dmrh_regions_and_query_code():
    model = DMRH(bits=8, input_shape=(28, 28, 1), num_classes=10, backbone="lenet",
                 params={"grid": 2})
    x = np.random.default_rng(5).integers(0, 255, (3, 28, 28, 1)).astype("uint8")
    out = model(x)
    regions = np.asarray(out["regions"])
    np.testing.assert_allclose(np.asarray(out["code"]), regions.mean(axis=1), rtol=1e-5,
                               atol=1e-6)
    # the fusion weights start uniform, so the fused code starts as the mean too
    np.testing.assert_allclose(np.asarray(out["fused"]), regions.mean(axis=1), rtol=1e-5,
                               atol=1e-6)
    # N = 1 is one globally pooled code: the mean over every position of the 4x4 map
    one = DMRH(bits=8, input_shape=(28, 28, 1), num_classes=10, backbone="lenet",
               params={"grid": 1})
    u_map = one.hash_conv(one.region_fc(one.backbone(one.rescale(x.astype("float32")))))
    np.testing.assert_allclose(np.asarray(one(x)["code"]),
                               np.asarray(u_map).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_dmrh_rejects_a_grid_finer_than_the_feature_map():
    with pytest.raises(ConfigError, match="feature map"):
        DMRH(bits=8, input_shape=(28, 28, 1), num_classes=10, backbone="lenet",
             params={"grid": 5})
    with pytest.raises(ConfigError, match="convolutional backbone"):
        DMRH(bits=8, input_shape=(8, 8, 1), num_classes=10, backbone="flatten")


@pytest.mark.parametrize("grid,fusion", [(1, "learned"), (2, "learned"), (2, "uniform")])
def test_dmrh_fusion_weights_train_only_when_there_are_regions_to_weigh(grid, fusion):
    """N = 1 has one region: its fusion logit would get no gradient, and Keras would warn
    "Gradients do not exist" on every step, so it is not trainable; N > 1 learns it,
    unless ``fusion: uniform`` fixes the weights equal."""
    import warnings

    import keras

    model = DMRH(bits=8, input_shape=(28, 28, 1), num_classes=10, backbone="lenet",
                 params={"grid": grid, "fusion": fusion})
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (8, 28, 28, 1)).astype("uint8")
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    before = model.fusion_logits.numpy().copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not [w for w in caught if "Gradients do not exist" in str(w.message)]
    learns = grid > 1 and fusion == "learned"
    assert model.fusion_logits.trainable == learns
    assert np.any(model.fusion_logits.numpy() != before) == learns


@pytest.mark.parametrize("kernel", [1, 3])
def test_dmrh_head_kernel_sets_how_far_a_region_sees(kernel):
    """A region's code sees only its own cell's features with a 1x1 head; a 3x3 head also
    sees the neighbouring positions of the feature map."""
    model = DMRH(bits=8, input_shape=(28, 28, 1), num_classes=10, backbone="lenet",
                 params={"grid": 2, "head_kernel": kernel})
    channels = model.backbone.output_shape[-1]
    features = np.random.default_rng(1).random((1, 4, 4, channels)).astype("float32")
    outside = features.copy()
    outside[0, 2, 2] += 1.0  # diagonal neighbour of region 0's corner (1, 1), in region 3
    region0 = [np.asarray(model.head(f)["regions"])[0, 0] for f in (features, outside)]
    assert np.any(np.abs(region0[0] - region0[1]) > 1e-6) == (kernel > 1)


@pytest.mark.parametrize("params,message", [({"head_kernel": 0}, "head_kernel"),
                                            ({"fusion": "max"}, "fusion")])
def test_dmrh_rejects_bad_head_params(params, message):
    with pytest.raises(ConfigError, match=message):
        DMRH(bits=8, input_shape=(28, 28, 1), num_classes=10, backbone="lenet",
             params={"grid": 2, **params})


@pytest.mark.parametrize("query_fusion,ablation,other", [("mean", "weighted_fusion", "fused"),
                                                         ("weighted", "mean_of_regions", "mean")])
def test_dmrh_scores_the_query_code_it_does_not_use(query_fusion, ablation, other):
    """The loss trains the weighted fusion and the query uses the plain mean (or the other
    way round): predict returns both, and the ablation binarises the unused one."""
    model = DMRH(bits=8, input_shape=(28, 28, 1), num_classes=10, backbone="lenet",
                 params={"grid": 2, "query_fusion": query_fusion})
    model.fusion_logits.assign(np.array([3.0, 0.0, -1.0, 1.0], "float32"))
    x = np.random.default_rng(2).integers(0, 255, (16, 28, 28, 1)).astype("uint8")
    out = model.predict_arrays(x)
    regions = np.asarray(model(x)["regions"])
    weights = np.exp([3.0, 0.0, -1.0, 1.0]) / np.exp([3.0, 0.0, -1.0, 1.0]).sum()
    expected = {"mean": regions.mean(axis=1), "fused": np.einsum("r,brk->bk", weights, regions)}
    np.testing.assert_allclose(out[other], expected[other], rtol=1e-4, atol=1e-6)
    used = "mean" if other == "fused" else "fused"
    np.testing.assert_allclose(out["code"], expected[used], rtol=1e-4, atol=1e-6)
    assert set(model.query_ablations()) == {ablation}
    np.testing.assert_array_equal(model.query_ablations()[ablation](out), expected[other] >= 0)
    # the two codes differ, so the checks above tell them apart
    assert np.abs(expected["mean"] - expected["fused"]).max() > 1e-3
    uniform = DMRH(bits=8, input_shape=(28, 28, 1), num_classes=10, backbone="lenet",
                   params={"grid": 2, "fusion": "uniform", "query_fusion": query_fusion})
    assert uniform.query_ablations() == {}  # equal weights: the mean is the fused code
