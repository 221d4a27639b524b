"""The standard benchmark protocols (CIFAR-10's three splits, NUS-WIDE, COCO, ImageNet-100)
on mock data: split counts, seeds, class checks, and each protocol's mAP@k."""

import contextlib
import json
import os

import numpy as np
import pytest

from keras_hashing.data import benchmarks
from keras_hashing.data import datasets as data
from keras_hashing.errors import DataError


def _cifar_labels():
    """CIFAR-10's layout: 50,000 train then 10,000 test images, 6,000 per class."""
    rng = np.random.default_rng(5)
    y = np.concatenate([rng.permutation(np.repeat(np.arange(10), 5000)),
                        rng.permutation(np.repeat(np.arange(10), 1000))])
    return y, np.arange(60000) >= 50000


@pytest.mark.parametrize("protocol, sizes", [
    ("cifar10", {"query": 1000, "train": 5000, "val": 500, "database": 54000}),
    ("cifar10-1", {"query": 1000, "train": 5000, "val": 500, "database": 59000}),
    ("cifar10-2", {"query": 10000, "train": 50000, "val": 5000, "database": 50000}),
])
@pytest.mark.parametrize("validation", ["none", "from-train"])
def test_cifar10_splits_have_the_papers_counts(protocol, sizes, validation):
    """The papers train on the whole training split (``none``, the default); ``from-train``
    holds the validation sample out of it instead."""
    y, is_test = _cifar_labels()
    parts = benchmarks.cifar10_positions(y, is_test, protocol, np.random.default_rng(0),
                                         validation)
    if validation == "from-train":
        sizes = {**sizes, "train": sizes["train"] - sizes["val"]}
    assert {name: len(rows) for name, rows in parts.items()} == sizes
    # class-balanced: every class the same share of each split
    for name, rows in parts.items():
        assert len(set(np.bincount(y[rows], minlength=10))) == 1, name
    query, database, train, val = (set(parts[n]) for n in ("query", "database", "train", "val"))
    assert not query & database and not query & train
    # from-train: validation is held out; none: it is a sample of the training images
    assert not train & val if validation == "from-train" else val <= train
    if protocol == "cifar10":  # the training images are not in the database
        assert not (train | val) & database and len(query | database | train | val) == 60000
    elif protocol == "cifar10-1":  # every image but the queries
        assert (train | val) <= database and len(query | database) == 60000
    else:  # the test set queries the training set
        assert query == set(np.flatnonzero(is_test)) and (train | val) == database
    # seeded: the same seed gives the same split, another seed another one
    again = benchmarks.cifar10_positions(y, is_test, protocol, np.random.default_rng(0),
                                         validation)
    other = benchmarks.cifar10_positions(y, is_test, protocol, np.random.default_rng(1),
                                         validation)
    assert all(np.array_equal(parts[n], again[n]) for n in parts)
    assert protocol == "cifar10-2" or not np.array_equal(parts["query"], other["query"])
    # the two settings draw the same queries, database and validation sample
    held_out = benchmarks.cifar10_positions(y, is_test, protocol, np.random.default_rng(0),
                                            "from-train" if validation == "none" else "none")
    assert all(np.array_equal(parts[n], held_out[n]) for n in ("query", "database", "val"))


def test_cifar10_protocols_over_tfds_stream_train_and_test_as_one(monkeypatch):
    """tfds:cifar10 with a protocol reads "train+test" (one numbering over the 60,000
    images) and cuts it by position; labels come from TFDS, patched here (no download)."""
    from keras_hashing.data import tfds as tfds_data

    pytest.importorskip("tensorflow_datasets")
    y, is_test = _cifar_labels()
    by_split = {"train": y[~is_test], "test": y[is_test], "train+test": y}
    monkeypatch.setattr(tfds_data, "_tfds_labels",
                        lambda name, split, *args: by_split[split])
    splits = data.load_dataset("tfds:cifar10", protocol="cifar10-1", download=False)
    assert {s: len(splits.split(s)) for s in ("query", "train", "val", "database")} == {
        "query": 1000, "train": 5000, "val": 500, "database": 59000}
    assert splits.validation == "none" and splits.summary()["validation_setting"] == "none"
    assert splits.query.split == "train+test" and splits.input_shape == (32, 32, 3)
    expected = benchmarks.cifar10_positions(y, is_test, "cifar10-1", np.random.default_rng(0))
    np.testing.assert_array_equal(splits.query.rows, expected["query"])
    np.testing.assert_array_equal(splits.query.y, y[expected["query"]])
    with pytest.raises(DataError, match="tfds:cifar10"):
        data.load_dataset("tfds:mnist", protocol="cifar10", download=False)


def _lists(folder, classes, multi_label, per_split):
    """DeepHash-pytorch's three lists over tiny PNGs (multi-hot or one-hot rows)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    for name, count in zip(("train.txt", "test.txt", "database.txt"), per_split):
        lines = []
        for i in range(count):
            path = folder / "img" / f"{name[:-4]}{i}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
            row = np.zeros(classes, int)
            row[i % classes] = 1
            if multi_label:
                row[(i * 7 + 3) % classes] = 1
            lines.append(f"img/{path.name} " + " ".join(map(str, row)))
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("protocol, classes, multi_label", [
    ("nuswide", 21, True), ("coco", 80, True), ("imagenet100", 100, False)])
def test_list_protocols_check_their_class_count(protocol, classes, multi_label, tmp_path):
    sizes = (10 * classes, 10, 2 * classes)  # 10 training images a class: 1 for validation
    lists = _lists(tmp_path / "ok", classes, multi_label, per_split=sizes)
    splits = data.load_dataset(f"list:{lists}", protocol=protocol)
    assert splits.num_classes == classes and splits.multi_label is multi_label
    wrong = _lists(tmp_path / "wrong", classes - 1, multi_label, per_split=sizes)
    with pytest.raises(DataError, match=f"{classes} classes but the lists"):
        data.load_dataset(f"list:{wrong}", protocol=protocol)
    with pytest.raises(DataError, match="list:DIR"):
        data.load_dataset(f"list:{lists / 'train.txt'}",
                          protocol=protocol)


def _label_rows(count, classes, multi_label):
    """``count`` DeepHash-pytorch label rows, classes in turn (a second label when multi)."""
    i = np.arange(count)
    rows = np.zeros((count, classes), int)
    rows[i, i % classes] = 1
    if multi_label:
        rows[i, (i * 7 + 3) % classes] = 1
    return rows


# The training counts the published tables use: CIFAR-10 (DeepHash-pytorch utils/tools.py,
# 500 a class, or 5,000 a class for cifar10-2), and the line counts of DeepHash-pytorch's
# data/{nuswide_21,coco,imagenet}/train.txt (10,500; 10,000; 13,000 = 130 a class).
PAPERS_TRAINING_COUNTS = {"cifar10": 5000, "cifar10-1": 5000, "cifar10-2": 50000,
                          "nuswide": 10500, "coco": 10000, "imagenet100": 13000}


@pytest.mark.parametrize("protocol", sorted(PAPERS_TRAINING_COUNTS))
def test_every_standard_protocol_trains_on_the_papers_count(protocol, tmp_path, monkeypatch):
    """Under the standard protocols' default (validation none) the model trains on the
    whole standard training split: the papers' count, every line of train.txt."""
    expected = PAPERS_TRAINING_COUNTS[protocol]
    if protocol in benchmarks.CIFAR10_PROTOCOLS:
        from keras_hashing.data import tfds as tfds_data

        pytest.importorskip("tensorflow_datasets")
        y, is_test = _cifar_labels()
        by_split = {"train": y[~is_test], "test": y[is_test], "train+test": y}
        monkeypatch.setattr(tfds_data, "_tfds_labels", lambda name, split, *args: by_split[split])

        def load(**kwargs):
            return data.load_dataset("tfds:cifar10", protocol=protocol, download=False, **kwargs)
    else:  # the lists' real lengths; paths only (nothing is decoded to split)
        classes = benchmarks.LIST_PROTOCOLS[protocol]
        multi = protocol != "imagenet100"
        for name, count in (("train.txt", expected), ("test.txt", 2 * classes),
                            ("database.txt", 3 * classes)):
            rows = _label_rows(count, classes, multi)
            (tmp_path / name).write_text("".join(
                f"img/{name[:-4]}{i}.jpg {' '.join(map(str, r))}\n" for i, r in enumerate(rows)))
        assert len((tmp_path / "train.txt").read_text().splitlines()) == expected

        def load(**kwargs):
            return data.load_dataset(f"list:{tmp_path}", protocol=protocol, **kwargs)
    splits = load()
    assert splits.validation == "none" and len(splits.train) == expected
    assert set(map(str, splits.val.paths if splits.val.paths is not None else [])) <= set(
        map(str, splits.train.paths if splits.train.paths is not None else []))
    held_out = load(validation="from-train")
    assert len(held_out.train) + len(held_out.val) == expected and len(held_out.val) > 0


def test_protocol_k_of_each_benchmark():
    from keras_hashing.data.benchmarks import protocol_k

    assert protocol_k("cifar10", 54000) == 54000 and protocol_k("cifar10-1", 59000) == 59000
    assert protocol_k("nuswide", 10**5) == 5000 == protocol_k("coco", 10**5)
    assert protocol_k("imagenet100", 10**5) == 1000 == protocol_k("fmnist", 10**5)


def test_recipes_for_the_standard_benchmarks_resolve():
    from keras_hashing.training.config import resolve_config

    for name in sorted(os.listdir(benchmarks_configs())):
        cfg = resolve_config(config_file=os.path.join(benchmarks_configs(), name))
        assert cfg["backbone"] in ("applications:VGG16", "applications:ResNet50"), name
        assert cfg["weights"] == "imagenet" and cfg["image_size"] == [224, 224], name
        assert cfg["protocol"] in benchmarks.PROTOCOL_K, name


# DeepHash-pytorch (github.com/swuxyj/DeepHash-pytorch) at commit
# ab14068ea9b33e8fe12de49d976d0c2e3f0dc129, the reference the recipes name; each value
# with the file and line it is read from.
REFERENCE = {
    # CSQ.py:34  "optimizer": {"type": optim.RMSprop, "optim_params": {"lr": 1e-5,
    #            "weight_decay": 10 ** -5}}  (torch.optim.RMSprop: alpha 0.99, eps 1e-8)
    "optimizer": "rmsprop-torch", "learning_rate": 1e-5, "weight_decay": 1e-5,
    "rmsprop_alpha": 0.99, "rmsprop_eps": 1e-8,
    # CSQ.py:122  optimizer(net.parameters(), ...): every parameter, one rate, decayed;
    # CSQ.py:128-149  the epoch loop steps the optimizer with no scheduler
    "lr_schedule": "constant", "lr_warmup_epochs": 0, "backbone_warmup_epochs": 0,
    "backbone_lr_multiplier": 1.0,
    # CSQ.py:33  "lambda": 0.0001  (one value for every bit length and dataset)
    "quantization_weight": 1e-4,
    # CSQ.py:38  "batch_size": 64;  CSQ.py:46  "epoch": 150;  CSQ.py:163 bit_list [64]
    "batch_size": 64, "epochs": 150, "bits": 64,
    # CSQ.py:135-156  trains on the whole train_loader list, no validation split
    "validation": "none",
    # network.py:53-56  ResNet: ... layer4, avgpool -> Linear(2048, K)
    "feature_layer": {"applications:ResNet50": "pooled",
                      # Unsupervised_GreedyHash.py:54-55  vgg16.classifier[:6] (to fc7)
                      "applications:VGG16": "fc7"},
    # utils/tools.py:64-74  lists: RandomHorizontalFlip;  utils/tools.py:96-100  CIFAR:
    # Resize(224) only
    "flip": {"cifar10": None, "nuswide": "horizontal", "coco": "horizontal",
             "imagenet100": "horizontal"},
    # float32 training (no autocast anywhere in CSQ.py)
    "mixed_precision": False,
}


@pytest.mark.parametrize("recipe", sorted(os.listdir(os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "configs", "benchmarks"))))
def test_each_benchmark_recipe_matches_its_reference(recipe):
    from keras_hashing.models.methods import get_method
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.optimizers import l2_weight_decay, make_optimizer

    path = os.path.join(benchmarks_configs(), recipe)
    text = open(path, encoding="utf-8").read()
    assert "swuxyj/DeepHash-pytorch" in text and "ab14068ea9b3" in text  # names it
    cfg = resolve_config(config_file=path)
    for key in ("learning_rate", "weight_decay", "lr_schedule", "lr_warmup_epochs",
                "backbone_warmup_epochs", "backbone_lr_multiplier", "batch_size", "epochs",
                "bits", "validation", "mixed_precision", "optimizer"):
        assert cfg[key] == REFERENCE[key], (recipe, key)
    params = {**get_method(cfg["method"]).default_params, **cfg["params"]}
    assert params["quantization_weight"] == REFERENCE["quantization_weight"]
    assert cfg["backbone_kwargs"].get("feature_layer", "pooled") == \
        REFERENCE["feature_layer"][cfg["backbone"]]
    assert cfg["augmentation"].get("flip") == REFERENCE["flip"][cfg["protocol"]]
    assert set(cfg["augmentation"]) <= {"flip"}
    # PyTorch's weight decay: in the optimizer, on every variable, w * theta; no L2 term
    optimizer = make_optimizer(cfg, steps_per_epoch=10)
    assert l2_weight_decay(cfg) == 0.0
    assert (optimizer.alpha, optimizer.eps, optimizer.coupled_weight_decay) == (
        REFERENCE["rmsprop_alpha"], REFERENCE["rmsprop_eps"], REFERENCE["weight_decay"])
    assert float(optimizer.learning_rate) == pytest.approx(REFERENCE["learning_rate"])


def benchmarks_configs():
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "benchmarks")


def _serve_weights_for_keras_applications(monkeypatch, tmp_path):
    """Keras's ImageNet download, answered offline: ``urlretrieve`` writes a generated
    no-top weights file of the backbone the URL names (its hash check is skipped: the real
    file's hash is a literal in keras.applications). Returns the URLs fetched."""
    import h5py
    import keras
    from keras.src.backend import config as keras_config
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils import file_utils

    # it must exist: Keras falls back to /tmp/.keras for a home it cannot write to
    (tmp_path / "keras").mkdir()
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras"))
    fetched = []

    def urlretrieve(url, target, *args, **kwargs):
        fetched.append(url)
        app = {"vgg16": keras.applications.VGG16,
               "resnet50": keras.applications.ResNet50}[os.path.basename(url).split("_")[0]]
        keras.utils.set_random_seed(11)
        # the with-top file (VGG16's fc7) in the layout of 32-pixel images
        net = app(include_top="notop" not in url, weights=None, input_shape=(32, 32, 3))
        with h5py.File(target, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, net)

    monkeypatch.setattr(file_utils, "urlretrieve", urlretrieve)
    monkeypatch.setattr(file_utils, "validate_file", lambda *args, **kwargs: True)
    return fetched


# every recipe as shipped, only scaled down: 32 px, batch 8, 2 steps, 2 epochs (the first
# trains the head on the frozen backbone, the second the backbone at its multiplier);
# no BatchNormalization recalibration, whose 100 eager ResNet50 batches would triple the
# time (it has its own tests)
SCALED_DOWN = ["--image-size", "32", "--epochs", "2", "--quiet",
               "--set", "batch_size=8", "--set", "steps_per_epoch=2",
               "--set", "tensorboard_samples=16", "--set", "val_database_size=64",
               "--set", "recalibrate_batchnorm=false"]


# In the suite: one recipe per kind of data (VGG16, about 25 s each); the ResNet50 ones
# (80-130 s each on 2 cores) and the rest with --runslow.
SUITE_RECIPES = ("cifar10_vgg16.yaml", "imagenet100_vgg16.yaml")


@pytest.mark.parametrize("recipe", [
    name if name in SUITE_RECIPES else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(os.listdir(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "benchmarks")))])
def test_each_benchmark_recipe_runs_end_to_end_on_mock_data(recipe, tmp_path, monkeypatch,
                                                            capsys):
    """The recipe's backbone with "ImageNet" weights fetched as Keras does, its protocol's
    splits and its mAP@k, on data of the real layout scaled down: tfds.testing.mock_data
    for CIFAR-10 (with fewer queries and training images per class), generated lists with
    the real label widths for NUS-WIDE, COCO and ImageNet-100."""
    import tensorflow_datasets as tfds

    from keras_hashing.cli.main import main
    from keras_hashing.training.config import resolve_config

    fetched = _serve_weights_for_keras_applications(monkeypatch, tmp_path)
    path = os.path.join(benchmarks_configs(), recipe)
    cfg = resolve_config(config_file=path)
    run = tmp_path / "run"
    argv = ["fit", "--config", path, "--out", str(run), *SCALED_DOWN]
    data_source = contextlib.ExitStack()  # what the run's data is read through, twice
    if cfg["protocol"] in benchmarks.CIFAR10_PROTOCOLS:
        monkeypatch.setattr(benchmarks, "CIFAR10_QUERIES_PER_CLASS", 2)
        monkeypatch.setattr(benchmarks, "CIFAR10_TRAIN_PER_CLASS", 10)
        data_source = tfds.testing.mock_data(num_examples=200)
        sizes = {"query": 20, "train": 100, "val": 10}  # validation none: all 100 train
    else:
        classes = benchmarks.LIST_PROTOCOLS[cfg["protocol"]]
        lists = _lists(tmp_path / "lists", classes, cfg["protocol"] != "imagenet100",
                       per_split=(10 * classes, 12, 2 * classes))
        argv += ["--dataset", f"list:{lists}"]
        sizes = {"query": 12, "train": 10 * classes, "val": classes}  # every train.txt line
    with data_source:
        assert main(argv) == 0
        capsys.readouterr()
        assert main(["evaluate", "--run", str(run)]) == 0  # the same numbers again
    shown = json.loads(capsys.readouterr().out)
    backbone = cfg["backbone"].split(":")[1].lower()
    assert len(fetched) == 1 and os.path.basename(fetched[0]).startswith(backbone)
    assert (tmp_path / "keras" / "models" / os.path.basename(fetched[0])).is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert {s: metrics[f"num_{s}"] for s in sizes} == sizes
    assert metrics["validation_setting"] == "none" and metrics["validation"]["kept"] == "last"
    assert metrics["validation"]["best_epoch"] == metrics["epochs_run"]  # the last one
    query = metrics["query"]
    assert query["k"] == (benchmarks.PROTOCOL_K[cfg["protocol"]] or metrics["num_database"])
    if query["k"] == 1000:  # ImageNet-100: the table's mAP@1000 is the protocol's
        assert query["map_at_k"] == query["map_1000"]
    assert 0 <= query["map_at_k"] <= 1 and 0 <= query["map_at_k_asym"] <= 1
    assert "map_all_asym" in query and metrics["epochs_run"] == 2
    assert shown["map_at_k"] == pytest.approx(query["map_at_k"])


def test_multi_hot_lists_without_any_label_are_refused(tmp_path):
    """All-zero multi-hot rows would train on nothing and score mAP 0: refused, whichever
    list holds them."""
    for name in ("train.txt", "test.txt", "database.txt"):
        lists = _lists(tmp_path / name, 21, True, per_split=(210, 10, 42))
        path = lists / name
        path.write_text("".join(line.split()[0] + " 0" * 21 + "\n"
                                for line in path.read_text().splitlines()))
        with pytest.raises(DataError, match="has a label"):
            data.load_dataset(f"list:{lists}", protocol="nuswide")
