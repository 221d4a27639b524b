import json
import os

import numpy as np
import pytest

from keras_hashing.data import datasets as data
from keras_hashing.data import pipeline
from keras_hashing.data import images
from keras_hashing.errors import DataError


def test_digits_protocol_is_disjoint_and_stratified(digits):
    assert digits.input_shape == (8, 8, 1) and digits.train.x.dtype == np.uint8
    assert len(digits.query) + len(digits.database) == 1797
    assert len(digits.train) + len(digits.val) == len(digits.database)
    assert digits.train.x.max() == 255
    counts = np.bincount(digits.query.y, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # about 20% of each class


def test_splits_are_reproducible_by_seed():
    a = data.load_dataset("digits", seed=3)
    b = data.load_dataset("digits", seed=3)
    c = data.load_dataset("digits", seed=4)
    np.testing.assert_array_equal(a.query.y, b.query.y)
    assert not np.array_equal(a.query.x, c.query.x)


def test_fashion_mnist_protocols_on_idx_files_in_data_dir(fake_fmnist):
    x_tr, y_tr, x_te, y_te = data.load_fashion_mnist(str(fake_fmnist))
    assert x_tr.shape == (6000, 28, 28, 1) and x_te.shape == (1500, 28, 28, 1)
    s = data.load_dataset("fashion_mnist", data_dir=str(fake_fmnist))
    assert (len(s.query), len(s.database), len(s.val), len(s.train)) == (1500, 6000, 5000, 1000)
    assert not set(map(bytes, s.val.x)) & set(map(bytes, s.train.x))
    r = data.load_dataset("fashion_mnist", data_dir=str(fake_fmnist), protocol="fmnist-reduced")
    assert (len(r.query), len(r.train), len(r.val), len(r.database)) == (1000, 5000, 500, 6500)
    db = set(map(bytes, r.database.x))
    assert not set(map(bytes, r.query.x)) & db           # queries are not in the database
    assert set(map(bytes, r.train.x)) <= db              # DPSH style: training images are
    assert not set(map(bytes, r.val.x)) & set(map(bytes, r.train.x))


@pytest.mark.parametrize("fold", [0, 1, 2, 3, 4])
def test_fmnist_unseen_never_trains_on_the_query_classes(fake_fmnist, fold):
    s = data.load_dataset("fashion_mnist", data_dir=str(fake_fmnist), protocol="fmnist-unseen",
                          unseen_fold=fold)
    unseen = set(data.FMNIST_UNSEEN_FOLDS[fold])
    assert set(np.unique(s.query.y)) == set(np.unique(s.database.y)) == unseen
    # training images come from the seen classes only (their pixels, whatever their ids)
    x_tr, y_tr, _, _ = data.load_fashion_mnist(str(fake_fmnist))
    by_image = {bytes(x): y for x, y in zip(x_tr, y_tr)}
    trained_on = {by_image[bytes(x)] for x in np.concatenate([s.train.x, s.val.x])}
    assert trained_on == set(range(10)) - unseen
    # heads are sized to the trained classes, numbered 0-7 in class order; the seen id of
    # an image is its class's rank among the seen classes
    seen = sorted(set(range(10)) - unseen)
    assert s.num_classes == 8 and set(np.unique(s.train.y)) == set(range(8))
    assert all(seen[y] == by_image[bytes(x)] for x, y in zip(s.train.x[:200], s.train.y[:200]))
    assert s.summary()["unseen_fold"] == fold
    # every test image of the unseen classes is a query, every training one in the database
    assert (len(s.query), len(s.database)) == (300, 1200)
    assert (len(s.val), len(s.train)) == (4000, 800)
    assert not set(map(bytes, s.val.x)) & set(map(bytes, s.train.x))


def test_fmnist_unseen_folds_hold_out_every_class_once_and_fold_0_is_the_default(fake_fmnist):
    held_out = [c for pair in data.FMNIST_UNSEEN_FOLDS for c in pair]
    assert sorted(held_out) == list(range(10))
    assert data.FMNIST_UNSEEN_FOLDS[0] == (8, 9)  # the rows measured before folds stay valid
    plain = data.load_dataset("fashion_mnist", data_dir=str(fake_fmnist), protocol="fmnist-unseen")
    fold0 = data.load_dataset("fashion_mnist", data_dir=str(fake_fmnist),
                              protocol="fmnist-unseen", unseen_fold=0)
    for name in ("train", "val", "query", "database"):
        np.testing.assert_array_equal(plain.split(name).x, fold0.split(name).x)
    for fold, protocol in ((5, "fmnist-unseen"), (-1, "fmnist-unseen"), ("1", "fmnist-unseen"),
                           (True, "fmnist-unseen"), (1, "fmnist"), (0, "fmnist-reduced")):
        with pytest.raises(DataError, match="unseen_fold"):
            data.load_dataset("fashion_mnist", data_dir=str(fake_fmnist), protocol=protocol,
                              unseen_fold=fold)


def test_unseen_fold_is_a_setting_fit_and_config_show_check_alike():
    from keras_hashing.errors import ConfigError
    from keras_hashing.training.config import resolve_config

    cfg = resolve_config(overrides={"dataset": "fashion_mnist", "protocol": "fmnist-unseen"},
                         sets=["unseen_fold=3"])
    assert cfg["unseen_fold"] == 3
    for protocol, fold in (("fmnist", "1"), ("fmnist-unseen", "7"), (None, "2")):
        with pytest.raises(ConfigError, match="unseen_fold"):
            resolve_config(overrides={"dataset": "fashion_mnist", "protocol": protocol},
                           sets=[f"unseen_fold={fold}"])


def test_fmnist_unseen_all_searches_every_class_with_unseen_queries(fake_fmnist):
    unseen_only = data.load_dataset("fashion_mnist", data_dir=str(fake_fmnist),
                                    protocol="fmnist-unseen")
    s = data.load_dataset("fashion_mnist", data_dir=str(fake_fmnist),
                          protocol="fmnist-unseen-all")
    unseen = set(data.FMNIST_UNSEEN_FOLDS[0])
    assert set(np.unique(s.query.y)) == unseen and s.num_classes == 8
    assert set(np.unique(s.database.y)) == set(range(10))  # every training image
    assert len(s.database) == 6000
    # the same training, validation and queries as fmnist-unseen: only the database grows
    for name in ("train", "val", "query"):
        np.testing.assert_array_equal(getattr(s, name).y, getattr(unseen_only, name).y)


def test_too_few_images_for_a_protocol_is_a_clear_error(tmp_path, fmnist_files):
    fmnist_files(tmp_path, train=1200, test=300)
    with pytest.raises(DataError, match="split 'train' is empty"):
        data.load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_fashion_mnist_real_protocols():
    if not os.path.isdir(data.FASHION_MNIST_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    s = data.load_dataset("fashion_mnist")
    assert (len(s.query), len(s.database), len(s.val), len(s.train)) == (10000, 60000, 5000,
                                                                        55000)
    assert np.bincount(s.val.y).tolist() == [500] * 10
    r = data.load_dataset("fashion_mnist", protocol="fmnist-reduced")
    assert (len(r.query), len(r.train), len(r.database)) == (1000, 5000, 69000)
    assert np.bincount(r.query.y).tolist() == [100] * 10


def test_missing_fashion_mnist_dir_names_the_package(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        data.load_dataset("fashion_mnist", data_dir=str(tmp_path / "nope"))


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    arr = np.zeros((5, 28, 28), np.uint8)
    path.write_bytes(bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big")
                                                    for s in arr.shape) + arr.tobytes()[:-3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.read_idx(str(path))


def test_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=60):
        s = data.load_dataset("tfds:mnist")
    assert s.input_shape == (28, 28, 1) and s.num_classes == 10
    assert len(s.query) == 60 and len(s.database) == 60
    assert len(s.train) + len(s.val) == 60


def _png_folder(root, classes=("cat", "dog"), per_class=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root


def test_folder_dataset_resizes_and_labels(tmp_path):
    root = _png_folder(tmp_path / "imgs")
    s = data.load_dataset(f"folder:{root}", image_size=(16, 16))
    assert s.input_shape == (16, 16, 3) and s.class_names == ["cat", "dog"]
    assert len(s.query) + len(s.database) == 24


def test_folder_with_non_image_file_names_it(tmp_path):
    root = _png_folder(tmp_path / "imgs")
    (root / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not an image file"):
        data.load_dataset(f"folder:{root}")
    (root / "cat" / "notes.txt").unlink()
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    # Collections stream: a broken file is found when a pipeline reaches it.
    s = data.load_dataset(f"folder:{root}")
    everything = s.train.subset(np.arange(len(s.train)))
    for split in (s.train, s.val, s.query, s.database):
        if any(str(p).endswith("broken.png") for p in split.paths):
            everything = split
    with pytest.raises(DataError, match="broken.png: cannot read image"):
        everything.x


@pytest.mark.parametrize("name", ["cifar", "tfds:", "folder:"])
def test_unknown_dataset_names(name):
    with pytest.raises(DataError, match="unknown dataset"):
        data.load_dataset(name)


def test_tf_pipeline_batches_all_examples(digits):
    ds = pipeline.make_tf_dataset(digits.val, batch_size=32, shuffle=True)
    seen = sum(int(x.shape[0]) for x, _ in ds)
    assert seen == len(digits.val)


def test_augmentation_changes_training_batches_only_in_pixels(digits):
    plain = next(iter(pipeline.make_tf_dataset(digits.train, 64)))
    augmented = next(iter(pipeline.make_tf_dataset(digits.train, 64, augmentation={
        "translation": 0.2, "rotation": 0.1})))
    x0, x1 = plain[0].numpy().astype(np.float32), augmented[0].numpy()
    assert x1.shape == x0.shape and x1.dtype == np.float32
    assert np.abs(x1 - x0).mean() > 5.0  # the pixels moved (0..255 scale)
    assert 0.0 <= x1.min() and x1.max() <= 255.0  # still raw pixels: the model rescales
    np.testing.assert_array_equal(augmented[1].numpy(), plain[1].numpy())  # labels kept
    second = next(iter(pipeline.make_tf_dataset(digits.train, 64, augmentation={
        "translation": 0.2, "rotation": 0.1})))
    assert x1.shape == second[0].shape  # a fresh pipeline works again (no stale state)


def test_fit_with_augmentation_in_the_config_learns(tmp_path):
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import fit

    cfg = resolve_config(overrides={"bits": 16, "epochs": 8, "learning_rate": 0.005},
                         sets=["augmentation.translation=0.1", "params.warmup_steps=60",
                               "val_database_size=600", "tensorboard_samples=50"])
    run = fit(cfg, out=str(tmp_path / "r"), verbose=0)
    assert run.config["augmentation"] == {"translation": 0.1}
    # chance is about 0.1; lowest over seeds 0-2, oneDNN on and off: 0.664 (AMD EPYC, AVX2;
    # tools/quality_spread.py --cases ssdh-augmentation)
    assert run.metrics["query"]["map_all"] > 0.4


def test_one_fmnist_unseen_run_is_scored_under_fmnist_unseen_all(fake_fmnist, tmp_path, capsys):
    """fmnist-unseen and fmnist-unseen-all train on the same images, so evaluate
    --protocol scores one trained model under both; a protocol that trains on other images
    (its queries could be training images) is refused, and so is a run without a record."""
    from keras_hashing.cli.main import main
    from keras_hashing.scoring import evaluate_model
    from keras_hashing.runs import load_run

    run = tmp_path / "run"
    assert main(["fit", "--method", "pcah", "--dataset", "fashion_mnist", "--data-dir",
                 str(fake_fmnist), "--protocol", "fmnist-unseen", "--bits", "16",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--protocol", "fmnist-unseen-all",
                 "--data-dir", str(fake_fmnist)]) == 0
    scored = json.loads(capsys.readouterr().out)
    whole = data.load_dataset("fashion_mnist", data_dir=str(fake_fmnist),
                              protocol="fmnist-unseen-all")
    expected = evaluate_model(load_run(str(run)).model, whole)
    assert scored["map_all"] == pytest.approx(expected["map_all"])
    own = json.loads((run / "metrics.json").read_text())["query"]
    assert scored["map_all"] != pytest.approx(own["map_all"])  # 6,000 images, not 1,200

    assert main(["evaluate", "--run", str(run), "--protocol", "fmnist",
                 "--data-dir", str(fake_fmnist)]) == 2
    assert "the fmnist protocol trains on other images" in capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["split_digests"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["evaluate", "--run", str(run), "--protocol", "fmnist-unseen-all",
                 "--data-dir", str(fake_fmnist)]) == 2
    assert "does not record its training split" in capsys.readouterr().err


def _epoch_split(kind, tmp_path, digits):
    if kind == "in memory":
        return digits.train.subset(np.arange(40))
    if kind == "image files":
        from keras_hashing.data import image_files

        c = image_files.read_folder(str(_png_folder(tmp_path, per_class=20)))
        return image_files.FileSplit(c.paths, c.labels, (16, 16), 3)
    return data.load_dataset("tfds:mnist").train


def _epoch_batches(ds):
    return [(x.numpy().astype(np.float32), y["index"].numpy()) for x, y in ds]


@pytest.mark.parametrize("kind", ["in memory", "image files", "tfds"])
def test_a_training_epoch_is_drawn_from_the_seed_and_its_number_alone(kind, digits,
                                                                      tmp_path):
    """Shuffled and augmented, epoch 2 of one pipeline is epoch 2 of a pipeline started
    at epoch 2 (what a resume builds), batch for batch: the same examples in the same
    order, augmented the same way; and epochs differ from each other in both."""
    import contextlib

    tfds = pytest.importorskip("tensorflow_datasets")
    with (tfds.testing.mock_data(num_examples=40) if kind == "tfds"
          else contextlib.nullcontext()):
        split = _epoch_split(kind, tmp_path, digits)
        settings = dict(shuffle=True, seed=5, with_index=True, augmentation={
            "translation": 0.2, "flip": "horizontal", "rotation": 0.1})
        ds = pipeline.make_tf_dataset(split, 8, **settings)
        epochs = [_epoch_batches(ds) for _ in range(3)]
        resumed = pipeline.make_tf_dataset(split, 8, first_epoch=2, **settings)
        again = _epoch_batches(resumed)
    assert len(again) == len(epochs[2]) and sum(len(i) for _, i in again) == len(split)
    for (x, i), (x2, i2) in zip(epochs[2], again):
        np.testing.assert_array_equal(i, i2)
        np.testing.assert_array_equal(x, x2)
    order = [np.concatenate([i for _, i in e]) for e in epochs]
    assert not np.array_equal(order[1], order[2])
    assert sorted(order[1].tolist()) == sorted(order[2].tolist())
    # the same example in two epochs is augmented differently
    seen = [{int(k): img for x, i in e for k, img in zip(i, x)} for e in epochs[1:]]
    moved = [np.abs(seen[0][k] - seen[1][k]).mean() > 0.5 for k in seen[0]]
    assert np.mean(moved) > 0.8
