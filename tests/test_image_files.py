"""Collections on disk: list / CSV / folder sources, streaming, bad images, resumable
index builds, pretrained backbones, the transfer-learning schedule, mixed precision."""

import os

import numpy as np
import pytest
from PIL import Image

from keras_hashing.cli import main as cli

from keras_hashing.data import datasets as data
from keras_hashing.data import tfds as tfds_data
from keras_hashing.data import pipeline
from keras_hashing.data import images
from keras_hashing.data import image_files

from keras_hashing import indexing
from keras_hashing.models import prediction
from keras_hashing.training.config import resolve_config
from keras_hashing.errors import DataError, IndexFileError
from keras_hashing.search.index import HammingIndex

COLOURS = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]])


def _photo(path, cls, rng, size=40, fmt=None):
    img = np.clip(COLOURS[cls] + rng.integers(-25, 25, (size, size, 3)), 0, 255)
    Image.fromarray(img.astype(np.uint8)).save(path, format=fmt)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """30 JPEGs of 3 colour classes in a folder, with a list file and a CSV over them."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    lines, rows = [], ["filename,label"]
    for cls, name in enumerate(("red", "green", "blue")):
        (root / "folder" / name).mkdir(parents=True)
        for i in range(10):
            rel = f"folder/{name}/{i}.jpg"
            _photo(root / rel, cls, rng)
            lines.append(f"{rel} " + " ".join("1" if c == cls else "0" for c in range(3)))
            rows.append(f"{rel},{name}")
    (root / "onehot.txt").write_text("\n".join(lines) + "\n")
    (root / "photos.csv").write_text("\n".join(rows) + "\n")
    return root


# -- parsing ------------------------------------------------------------------------------
def test_list_file_multi_hot_one_hot_ids_and_names(tmp_path):
    (tmp_path / "multi.txt").write_text("a.jpg 1 0 1\nsub/b.jpg 0 1 0\n")
    c = image_files.read_list_file(str(tmp_path / "multi.txt"))
    assert c.multi_label and c.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert c.paths.tolist() == [str(tmp_path / "a.jpg"), str(tmp_path / "sub/b.jpg")]
    (tmp_path / "onehot.txt").write_text("a.jpg 0 0 1\nb.jpg 1 0 0\n")
    c = image_files.read_list_file(str(tmp_path / "onehot.txt"), data_dir="/data")
    assert not c.multi_label and c.labels.tolist() == [2, 0]  # one-hot rows are classes
    assert c.paths.tolist() == ["/data/a.jpg", "/data/b.jpg"]  # --data-dir wins
    (tmp_path / "names.txt").write_text("a.jpg cat\n/abs/b.jpg dog\n# comment\nc.jpg cat\n")
    c = image_files.read_list_file(str(tmp_path / "names.txt"))
    assert c.labels.tolist() == [0, 1, 0] and c.class_names == ["cat", "dog"]
    assert c.paths[1] == "/abs/b.jpg"


@pytest.mark.parametrize("text, message", [
    ("a.jpg 1 0\nb.jpg 1\n", "same number"),
    ("a.jpg 1 2\nb.jpg 0 1\n", "line 1: labels must be 0 or 1"),
    ("a.jpg x y\nb.jpg 0 1\n", "must be 0/1"),
    ("\n# only a comment\n", "lists no images"),
])
def test_bad_list_files_say_what_and_where(tmp_path, text, message):
    (tmp_path / "l.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        image_files.read_list_file(str(tmp_path / "l.txt"))


def test_csv_with_single_and_multi_labels(tmp_path):
    (tmp_path / "a.csv").write_text("Path,Labels\nx.jpg,beach|sea\ny.jpg,sea\nz.jpg,city\n")
    c = image_files.read_csv_file(str(tmp_path / "a.csv"))
    assert c.class_names == ["beach", "city", "sea"]
    assert c.labels.tolist() == [[1, 0, 1], [0, 0, 1], [0, 1, 0]]
    (tmp_path / "b.csv").write_text("image,class\nx.jpg,3\ny.jpg,1\n")
    assert image_files.read_csv_file(str(tmp_path / "b.csv")).labels.tolist() == [3, 1]
    (tmp_path / "c.csv").write_text("name,label\nx.jpg,1\n")
    with pytest.raises(DataError, match="no path column"):
        image_files.read_csv_file(str(tmp_path / "c.csv"))


def test_deephash_list_folder_gives_train_query_database(tmp_path, collection):
    lines = (collection / "onehot.txt").read_text().splitlines()
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    (folder / "test.txt").write_text("\n".join(lines[1:30:4]) + "\n")
    (folder / "database.txt").write_text("\n".join(lines[0:30:2]) + "\n")
    s = data.load_dataset(f"list:{folder}", data_dir=str(collection), image_size=(16, 16))
    assert (len(s.query), len(s.database), len(s.train) + len(s.val)) == (8, 15, 30)
    assert len(s.val) >= 1 and not set(s.val.paths) & set(s.train.paths)
    assert all(p.startswith(str(collection)) for p in s.query.paths)
    assert s.num_classes == 3 and not s.multi_label
    with pytest.raises(DataError, match="missing"):
        data.load_dataset(f"list:{tmp_path}")


def test_deephash_lists_of_class_names_share_one_id_per_name(tmp_path):
    (tmp_path / "train.txt").write_text("a.jpg cat\nb.jpg dog\nc.jpg emu\n")
    (tmp_path / "test.txt").write_text("d.jpg emu\n")  # alone it would be class 0
    (tmp_path / "database.txt").write_text("e.jpg dog\nf.jpg emu\n")
    parts = image_files.read_deephash_lists(str(tmp_path))
    assert parts["query"].labels.tolist() == [2]
    assert parts["database"].labels.tolist() == [1, 2]
    assert parts["train"].class_names == ["cat", "dog", "emu"]
    (tmp_path / "test.txt").write_text("d.jpg 2\n")
    with pytest.raises(DataError, match="by class name, others by id"):
        image_files.read_deephash_lists(str(tmp_path))


# -- streaming ----------------------------------------------------------------------------
def test_file_pipeline_decodes_every_image_with_its_label(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    expected = {}
    for i in range(6):
        img = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
        path = tmp_path / "ab"[i % 2] / f"{i}.png"
        Image.fromarray(img).save(path)
        expected[str(path)] = (img, i % 2)
    c = image_files.read_folder(str(tmp_path))
    split = image_files.FileSplit(c.paths, c.labels, (12, 12), 3)
    batches = list(pipeline.make_tf_dataset(split, 4, shuffle=True, seed=3))
    assert [len(x) for x, _ in batches] == [4, 2]
    images = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    # PNG is lossless and the size unchanged: every image comes back exactly, labelled
    found = {bytes(img.tobytes()): lab for img, lab in zip(images, labels)}
    assert found == {bytes(img.tobytes()): lab for img, lab in expected.values()}
    np.testing.assert_array_equal(split.x, np.stack([expected[p][0] for p in c.paths]))


def test_bad_images_fail_by_name_or_are_skipped_with_a_report(tmp_path, capfd):
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            _photo(tmp_path / name / f"{i}.jpg", 0, rng, size=8)
    good = (tmp_path / "a" / "0.jpg").read_bytes()
    (tmp_path / "a" / "1.jpg").write_bytes(good[:len(good) // 3])  # truncated
    (tmp_path / "b" / "2.jpg").write_bytes(b"not a jpeg")
    c = image_files.read_folder(str(tmp_path))
    split = image_files.FileSplit(c.paths, c.labels, (8, 8), 3, on_bad_image="fail")
    with pytest.raises(DataError, match=r"a/1\.jpg: cannot read image"):
        prediction.predict_split(_tiny_model(), split)
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        list(pipeline.make_tf_dataset(split, 6))
    assert "a/1.jpg" in str(images.bad_image_error(caught.value))
    skip = image_files.FileSplit(c.paths, c.labels, (8, 8), 3, on_bad_image="skip")
    seen = sum(len(x) for x, _ in pipeline.make_tf_dataset(skip, 6))
    assert seen == 4
    assert "a/1.jpg" in capfd.readouterr().err
    out = prediction.predict_split(_tiny_model(), skip)
    assert out["ok"].tolist() == [True, False, True, True, True, False]


def _tiny_model(shape=(8, 8, 3), bits=8):
    from keras_hashing.models.methods.ssdh import SSDH

    return SSDH(bits=bits, input_shape=shape, num_classes=3)


def test_fit_on_a_multi_label_list_streams_and_scores_shared_labels(tmp_path, collection):
    lines = (collection / "onehot.txt").read_text().splitlines()
    multi = []
    for i, line in enumerate(lines):  # every 3rd image also carries the next class
        path, *hot = line.split()
        hot = [int(h) for h in hot]
        if i % 3 == 0:
            hot[(hot.index(1) + 1) % 3] = 1
        multi.append(path + " " + " ".join(map(str, hot)))
    (tmp_path / "multi.txt").write_text("\n".join(multi) + "\n")
    from keras_hashing.training.fit import fit

    cfg = resolve_config(overrides={"dataset": f"list:{tmp_path / 'multi.txt'}", "bits": 16,
                                    "epochs": 2, "data_dir": str(collection)},
                         sets=["image_size=16", "tensorboard_samples=10"])
    run = fit(cfg, out=str(tmp_path / "run"), verbose=0)
    assert run.metrics["num_train"] + run.metrics["num_val"] == 27
    assert run.model.multi_label and run.metrics["query"]["num_database"] == 27
    assert 0.0 < run.metrics["query"]["map_all"] <= 1.0


def test_fit_stops_on_a_bad_image_by_name_and_leaves_no_run(tmp_path, collection, capsys):
    folder = tmp_path / "photos"
    import shutil

    shutil.copytree(collection / "folder", folder)
    (folder / "red" / "3.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "run"
    code = cli.main(["fit", "--dataset", f"folder:{folder}", "--epochs", "1", "--bits", "8",
                     "--image-size", "16", "--out", str(out), "--quiet",
                     "--set", "tensorboard_samples=5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "red/3.jpg: cannot read image" in err[0], err
    assert not out.exists()


# -- index build and encode over a collection -----------------------------------------------
@pytest.fixture(scope="module")
def photo_run(tmp_path_factory, collection):
    from keras_hashing.training.fit import fit

    cfg = resolve_config(overrides={"dataset": f"folder:{collection / 'folder'}", "bits": 16,
                                    "epochs": 2},
                         sets=["image_size=16", "tensorboard_samples=10"])
    return fit(cfg, out=str(tmp_path_factory.mktemp("runs") / "photos"), verbose=0)


def test_index_build_over_images_keeps_paths_and_labels(tmp_path, photo_run, collection):
    from keras_hashing.search.index import HammingIndex

    out = tmp_path / "p.khi"
    assert cli.main(["index", "build", "--run", photo_run.path, "--images",
                     f"csv:{collection / 'photos.csv'}", "--out", str(out), "--quiet",
                     "--batch-size", "7"]) == 0
    index = HammingIndex.load(out)
    assert len(index) == 30 and index.paths[0].endswith("folder/red/0.jpg")
    assert index.labels.tolist() == [2] * 10 + [1] * 10 + [0] * 10  # names sorted: blue=0
    model_codes = photo_run.model.encode(
        data.load_images_split(f"csv:{collection / 'photos.csv'}", (16, 16, 3)).x)
    np.testing.assert_array_equal(index.codes, model_codes)
    assert not os.path.exists(str(out) + ".partial")
    # a query read from one of the files gets exactly the code the index holds for it
    query = image_files.load_images([index.paths[7]], (16, 16), 3)
    np.testing.assert_array_equal(photo_run.model.encode(query)[0], index.codes[7])


def test_interrupted_index_build_resumes_to_the_same_file(tmp_path, photo_run, collection):
    from keras_hashing.search.index import HammingIndex

    split = data.load_images_split(f"folder:{collection / 'folder'}", (16, 16, 3))
    fingerprint = {"run": photo_run.path, "count": len(split)}
    clean = tmp_path / "clean.khi"
    indexing.build_index(split, str(clean), 16,
                          indexing.model_batches(photo_run.model, split, 4), fingerprint, {})

    def dying_batches(start):  # killed after two batches
        for i, batch in enumerate(indexing.model_batches(photo_run.model, split, 4)(start)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    out = tmp_path / "resumed.khi"
    with pytest.raises(KeyboardInterrupt):
        indexing.build_index(split, str(out), 16, dying_batches, fingerprint, {})
    assert not out.exists() and os.path.isdir(str(out) + ".partial")
    # a kill between a data write and its checkpoint leaves bytes past the state
    with open(os.path.join(str(out) + ".partial", "codes.bin"), "ab") as f:
        f.write(b"\x07" * 5)
    with pytest.raises(IndexFileError, match="other inputs"):
        indexing.build_index(split, str(out), 16, dying_batches, {"other": 1}, {})
    _, _, resumed_from = indexing.build_index(
        split, str(out), 16, indexing.model_batches(photo_run.model, split, 4), fingerprint, {})
    assert resumed_from == 8
    a, b = HammingIndex.load(clean), HammingIndex.load(out)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.paths == b.paths and a.labels.tolist() == b.labels.tolist()
    assert not os.path.exists(str(out) + ".partial")


def test_a_resumed_index_build_refuses_a_changed_file_list(tmp_path, photo_run, collection,
                                                          monkeypatch):
    """Killed, then an indexed image moves to another class folder: the rerun must not
    mix the two lists (the old path indexed, the new one missing)."""
    import shutil

    folder = tmp_path / "folder"
    shutil.copytree(collection / "folder", folder)
    model_batches = indexing.model_batches

    def dying(model, split, batch_size=256, verbose=0):
        def batches(start):
            for i, batch in enumerate(model_batches(model, split, 4)(start)):
                if i == 2:
                    raise KeyboardInterrupt
                yield batch
        return batches

    out = tmp_path / "i.khi"
    spec = f"folder:{folder}"
    monkeypatch.setattr(indexing, "model_batches", dying)
    assert cli.main(["index", "build", "--run", photo_run.path, "--images", spec,
                     "--out", str(out), "--quiet"]) == 130  # as Ctrl-C
    monkeypatch.setattr(indexing, "model_batches", model_batches)
    (folder / "blue" / "0.jpg").rename(folder / "green" / "moved.jpg")
    assert cli.main(["index", "build", "--run", photo_run.path, "--images", spec,
                     "--out", str(out), "--quiet"]) == 2
    assert not out.exists() and os.path.isdir(f"{out}.partial")
    # the same list as before resumes
    (folder / "green" / "moved.jpg").rename(folder / "blue" / "0.jpg")
    assert cli.main(["index", "build", "--run", photo_run.path, "--images", spec,
                     "--out", str(out), "--quiet"]) == 0
    assert len(HammingIndex.load(out)) == 30


def test_evaluate_refuses_a_folder_that_changed_since_the_run(tmp_path, photo_run, collection,
                                                              capsys):
    import shutil

    import yaml

    folder, run = tmp_path / "folder", tmp_path / "run"
    shutil.copytree(collection / "folder", folder)
    shutil.copytree(photo_run.path, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["dataset"] = f"folder:{folder}"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    # a moved copy of the same images re-splits exactly as the run did
    assert cli.main(["evaluate", "--run", str(run)]) == 0
    capsys.readouterr()
    shutil.copy(folder / "red" / "0.jpg", folder / "red" / "new.jpg")
    assert cli.main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "changed since" in err and "split differs" in err
    (folder / "red" / "new.jpg").unlink()
    (folder / "red" / "1.jpg").rename(folder / "green" / "1b.jpg")  # moved to another class
    assert cli.main(["evaluate", "--run", str(run)]) == 2
    assert "changed since" in capsys.readouterr().err


def test_index_build_through_tf_serving_matches_the_model(tmp_path, photo_run, collection):
    from tf_serving_stub import TFServingStub

    from keras_hashing.serving.export import export_run
    from keras_hashing.search.index import HammingIndex

    export_run(photo_run.path, base=str(tmp_path / "sm"), name="photos")
    (collection / "extra").mkdir(exist_ok=True)
    listing = tmp_path / "l.txt"
    paths = sorted(str(p) for p in (collection / "folder").rglob("*.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    listing.write_text("\n".join(paths[:12] + [str(tmp_path / "broken.jpg")] + paths[12:20])
                       + "\n")
    local = tmp_path / "local.khi"
    assert cli.main(["index", "build", "--run", photo_run.path, "--images", f"list:{listing}",
                     "--out", str(local), "--on-bad-image", "skip", "--quiet"]) == 0
    served = tmp_path / "served.khi"
    with TFServingStub(str(tmp_path / "sm")) as server:
        assert cli.main(["index", "build", "--serving-url", server.url, "--model", "photos",
                         "--images", f"list:{listing}", "--out", str(served), "--concurrency",
                         "3", "--batch-size", "4", "--on-bad-image", "skip", "--quiet"]) == 0
    a, b = HammingIndex.load(local), HammingIndex.load(served)
    assert len(a) == len(b) == 20 and a.paths == b.paths
    assert a.metadata["skipped_images"] == b.metadata["skipped_images"] == 1
    agreement = (np.unpackbits(a.codes) == np.unpackbits(b.codes)).mean()
    assert agreement > 0.99, agreement


def test_encode_images_writes_codes_paths_and_labels(tmp_path, photo_run, collection):
    out = tmp_path / "c.npz"
    assert cli.main(["encode", "--run", photo_run.path, "--images",
                     f"folder:{collection / 'folder'}", "--out", str(out), "--quiet"]) == 0
    with np.load(out) as z:
        assert z["codes"].shape == (30, 2) and z["labels"].tolist() == [0] * 10 + [1] * 10 + \
            [2] * 10 and z["paths"][0].endswith("blue/0.jpg")


# -- backbones ------------------------------------------------------------------------------
@pytest.mark.parametrize("app", ["ResNet50", "VGG16", "ResNet50V2", "DenseNet121",
                                 "EfficientNetV2B0", "MobileNetV3Small", "ConvNeXtTiny"])
def test_each_family_gets_its_own_preprocess_input(app):
    import importlib

    import keras

    from keras_hashing.models.backbones import ApplicationPreprocessing

    module = importlib.import_module(getattr(keras.applications, app).__module__)
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(ApplicationPreprocessing(app)(x)),
                               module.preprocess_input(x.copy()), rtol=1e-5, atol=1e-4)


def test_caffe_families_see_bgr_mean_subtracted_pixels():
    import keras

    from keras_hashing.models.backbones import build_backbone

    net = build_backbone("applications:ResNet50", (32, 32, 1))
    inner = keras.Model(net.input, net.get_layer("preprocess_input").output)
    grey = np.full((1, 32, 32, 1), 0.5, "float32")  # the model's [0, 1] scale
    got = np.asarray(inner(grey))[0, 0, 0]
    np.testing.assert_allclose(got, 127.5 - np.array([103.939, 116.779, 123.68]), atol=1e-3)


def _fake_imagenet_file(monkeypatch, tmp_path, app="MobileNetV3Small"):
    """Weights where keras.utils.get_file looks (KERAS_HOME/models), with their hash."""
    import h5py
    import keras
    from keras.src.applications import mobilenet_v3
    from keras.src.backend import config as keras_config
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils.file_utils import hash_file

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras"))
    net = getattr(keras.applications, app)(include_top=False, weights=None,
                                           input_shape=(32, 32, 3), pooling="avg")
    rng = np.random.default_rng(5)
    net.set_weights([rng.normal(size=w.shape).astype("float32") for w in net.get_weights()])
    target = tmp_path / "keras" / "models" / "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    target.parent.mkdir(parents=True)
    with h5py.File(target, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, net)
    key = "small_224_1.0_float"
    monkeypatch.setitem(mobilenet_v3.WEIGHTS_HASHES, key,
                        (mobilenet_v3.WEIGHTS_HASHES[key][0], hash_file(str(target))))
    return net


def test_imagenet_weights_load_from_where_keras_keeps_them(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    from keras_hashing.training.fit import build_model

    reference = _fake_imagenet_file(monkeypatch, tmp_path)
    monkeypatch.setattr(file_utils, "urlretrieve",
                        lambda *a, **k: pytest.fail("downloaded although the file is there"))
    splits = _folder_splits(tmp_path)
    cfg = resolve_config(overrides={"backbone": "applications:MobileNetV3Small",
                                    "weights": "imagenet", "bits": 8})
    model = build_model(cfg, splits)
    inner = [layer for layer in model.backbone.layers if hasattr(layer, "layers")][0]
    for got, want in zip(inner.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_offline_imagenet_download_is_one_line_saying_where_to_put_it(
        tmp_path, monkeypatch, capsys):
    import urllib.error

    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    folder = _folder_splits(tmp_path, return_folder=True)
    code = cli.main(["fit", "--dataset", f"folder:{folder}", "--backbone",
                     "applications:MobileNetV3Small", "--weights", "imagenet", "--epochs", "1",
                     "--image-size", "32", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    # Keras announces the download it tries ("Downloading data from URL"); then one error
    assert code == 2 and len(err) <= 2 and err[-1].startswith("keras-hashing: error:"), err
    assert "https://" in err[-1] and "no_top_v2.h5" in err[-1]
    assert str(tmp_path / "keras" / "models") in err[-1] and "--weights FILE" in err[-1]
    assert not (tmp_path / "r").exists()


def _folder_splits(tmp_path, return_folder=False):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cols"
    for cls, name in enumerate(("r", "g")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            _photo(folder / name / f"{i}.png", cls, rng, size=32)
    if return_folder:
        return folder
    return data.load_dataset(f"folder:{folder}", image_size=(32, 32))


def test_a_model_on_an_application_backbone_saves_and_loads(tmp_path):
    import keras

    from keras_hashing.training.fit import build_model

    splits = _folder_splits(tmp_path)
    cfg = resolve_config(overrides={"backbone": "applications:ResNet50", "bits": 8})
    model = build_model(cfg, splits)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = splits.query.x
    np.testing.assert_array_equal(loaded.encode(x), model.encode(x))
    assert loaded.backbone.get_layer("preprocess_input").application == "ResNet50"


def test_frozen_backbone_then_unfrozen_at_a_lower_rate(tmp_path):
    import keras

    from keras_hashing.training.callbacks import BackboneWarmup
    from keras_hashing.training.fit import build_model
    from keras_hashing.training.optimizers import make_optimizer

    splits = _folder_splits(tmp_path)
    cfg = resolve_config(overrides={"backbone": "applications:MobileNetV3Small", "bits": 8,
                                    "epochs": 2, "optimizer": "sgd", "learning_rate": 0.05},
                         sets=["backbone_lr_multiplier=0.1"])
    model = build_model(cfg, splits)
    model.compile(optimizer=make_optimizer(cfg, 2, model.backbone.trainable_variables))
    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([np.array(w) for w in model.backbone.weights])

    start = [np.array(w) for w in model.backbone.weights]
    model.fit(pipeline.make_tf_dataset(splits.train, 4, shuffle=True), epochs=2, verbose=0,
              callbacks=[BackboneWarmup(1), Snapshot()])
    # epoch 1: every backbone weight, BatchNormalization statistics included, unchanged
    assert all(np.array_equal(a, b) for a, b in zip(start, snapshots[0]))
    # epoch 2: the backbone learns
    assert any(not np.array_equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))


def test_learning_rate_multiplier_is_per_variable():
    import keras

    from keras_hashing.training.optimizers import scale_learning_rate

    head, body = keras.Variable(np.zeros(3, "float32")), keras.Variable(np.zeros(3, "float32"))
    optimizer = keras.optimizers.SGD(0.1)
    scale_learning_rate(optimizer, [body], 0.1)
    optimizer.apply([np.ones(3, "float32")] * 2, [head, body])
    np.testing.assert_allclose(np.asarray(head), -0.1)
    np.testing.assert_allclose(np.asarray(body), -0.01)


def test_mixed_precision_trains_with_loss_scaling(digits, capsys):
    import keras

    from keras_hashing.training.fit import build_model, use_mixed_precision

    cfg = resolve_config(overrides={"bits": 16, "mixed_precision": True})
    assert use_mixed_precision(cfg) is False  # no GPU here: it stays off, with a warning
    assert "no GPU is visible" in capsys.readouterr().err
    model = build_model(cfg, digits, mixed_precision=True)
    assert keras.mixed_precision.global_policy().name == "float32"  # not leaked
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(pipeline.make_tf_dataset(digits.train, 64), epochs=1, verbose=0,
                        steps_per_epoch=3)
    assert np.isfinite(history.history["loss"][-1])
    assert any(not np.array_equal(a, np.array(b)) for a, b in zip(before,
                                                                 model.trainable_weights))
    assert model.backbone.layers[1].compute_dtype == "float16"


# -- TFDS ----------------------------------------------------------------------------------
def test_tfds_downloads_unless_told_not_to_and_streams():
    from unittest import mock

    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []
    # mock_data replaces download_and_prepare itself: record calls inside it
    with tfds.testing.mock_data(num_examples=40), mock.patch.object(
            tfds.core.DatasetBuilder, "download_and_prepare",
            lambda self, *a, **k: calls.append(self.name)):
        s = data.load_dataset("tfds:mnist", image_size=(12, 12), channels=3)
        assert calls == ["mnist"]
        assert isinstance(s.train, tfds_data.TfdsSplit) and s.input_shape == (12, 12, 3)
        x = s.val.x
        assert x.shape == (len(s.val), 12, 12, 3) and x.dtype == np.uint8
        data.load_dataset("tfds:mnist", download=False)
        assert calls == ["mnist"]


def test_tfds_offline_download_names_the_url_and_the_way_out(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(self, *a, **k):
        raise ConnectionError("HTTPSConnectionPool(host='storage.example.org', port=443): Max "
                              "retries exceeded with url: /mnist/train.gz (Caused by "
                              "NameResolutionError)")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataError) as caught:
        data.load_dataset("tfds:mnist", data_dir="/tmp/kh-no-tfds")
    message = str(caught.value)
    assert "https://storage.example.org/mnist/train.gz" in message
    assert "tfds build mnist" in message and "--data-dir" in message


BOMB_CHECK = r"""
import os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from keras_hashing.data.image_files import load_images
from keras_hashing.errors import DataError
load_images([sys.argv[2]], (8, 8), 1)  # TensorFlow warmed up on a normal image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_images([sys.argv[1]], (8, 8), 1)
    print("decoded")
except DataError as e:
    print("refused", "megapixels" in str(e))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
    """400 megapixels in a 0.4 MB PNG: refused from its header, without the 400 MB."""
    import struct
    import subprocess
    import sys
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    side = 20000
    packer = zlib.compressobj(1)
    rows = b"".join(packer.compress(b"\0" * (side + 1)) for _ in range(side)) + packer.flush()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    proc = subprocess.run([sys.executable, "-c", BOMB_CHECK, str(bomb), str(tmp_path / "ok.png")],
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = proc.stdout.split("\n")
    assert proc.returncode == 0 and lines[0] == "refused True", proc.stdout + proc.stderr[-2000:]
    assert int(lines[1]) < 100, f"peak memory grew by {lines[1]} MiB"


def test_declared_pixels_reads_every_supported_header(tmp_path):
    import tensorflow as tf

    from keras_hashing.data.images import declared_pixels

    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        path = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(np.zeros((30, 70, 3), np.uint8)).save(path, fmt)
        assert int(declared_pixels(tf.io.read_file(str(path)))) == 2100, fmt
    assert int(declared_pixels(tf.constant(b"not an image"))) == 0
