"""Cached frozen features (keras_hashing.training.feature_cache): the head trained on
stored features is the model trained on images, and a changed split or backbone never
reuses them."""

import numpy as np
import pytest

from keras_hashing.training import feature_cache


def _fit(tmp_path, name, cache, monkeypatch, calls, sets=("freeze_backbone=true",), epochs=2):
    from keras_hashing.runs import load_run
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import fit

    real = feature_cache.split_features

    def counted(*args, **kwargs):
        features = real(*args, **kwargs)
        calls.append(None if features is None else features.shape)
        return features

    monkeypatch.setattr(feature_cache, "split_features", counted)
    cfg = resolve_config(overrides={"bits": 16, "epochs": epochs, "learning_rate": 0.005},
                         recipe=False,
                         sets=[*sets, f"feature_cache={str(cache).lower()}",
                               "val_database_size=200", "tensorboard_samples=50"])
    fit(cfg, out=str(tmp_path / name), verbose=0)
    return load_run(str(tmp_path / name))


def test_the_head_trained_on_cached_features_is_the_head_trained_on_images(tmp_path,
                                                                          monkeypatch):
    calls = []
    cached = _fit(tmp_path, "cached", True, monkeypatch, calls)
    # train and val, each encoded once
    assert [c[0] for c in calls] == [cached.metrics["num_train"], cached.metrics["num_val"]]
    online = _fit(tmp_path, "online", False, monkeypatch, calls)
    assert len(calls) == 2  # the second fit trained on images
    for a, b in zip(cached.model.get_weights(), online.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-4)
    assert not any((tmp_path / "cached").rglob("*.npy"))  # gone with the backup


def test_stored_features_are_reused_and_a_changed_image_or_backbone_is_not(tmp_path,
                                                                          monkeypatch,
                                                                          digits):
    from keras_hashing.data.splits import ArraySplit
    from keras_hashing.models.methods.ssdh import SSDH

    model = SSDH(bits=16, input_shape=(8, 8, 1), num_classes=10)
    model.backbone.trainable = False
    split = digits.train.subset(np.arange(300))
    first = feature_cache.split_features(model, split, str(tmp_path))
    assert first.shape == (300, 256) and isinstance(first, np.memmap)
    expected = np.asarray(model.backbone(model.rescale(split.x.astype("float32")),
                                         training=False))
    np.testing.assert_allclose(first, expected, atol=1e-5)

    def never(images, batch_size=512):
        raise AssertionError("the stored features should have been read")

    monkeypatch.setattr(model, "features", never)
    np.testing.assert_array_equal(feature_cache.split_features(model, split, str(tmp_path)),
                                  first)
    changed_x = split.x.copy()
    changed_x[7, 0, 0, 0] ^= 1
    changed = ArraySplit(changed_x, split.y)
    assert feature_cache.feature_key(model, changed) != feature_cache.feature_key(model, split)
    other = SSDH(bits=16, input_shape=(8, 8, 1), num_classes=10)
    assert feature_cache.feature_key(other, split) != feature_cache.feature_key(model, split)
    with pytest.raises(AssertionError, match="should have been read"):
        feature_cache.split_features(model, changed, str(tmp_path))
    assert len(list((tmp_path / feature_cache.FEATURES_DIR).glob("*.npy"))) == 1  # no stray


def test_only_frozen_epochs_without_augmentation_train_on_a_cache():
    from keras_hashing.models.methods import get_method
    from keras_hashing.training.config import resolve_config

    ssdh = get_method("ssdh")(bits=16, input_shape=(8, 8, 1), num_classes=10)
    uh = get_method("uh-bdnn")(bits=16, input_shape=(8, 8, 1), backbone="flatten",
                               params={"num_train": 4})
    frozen = resolve_config(sets=["freeze_backbone=true", "epochs=7"], recipe=False)
    assert feature_cache.cached_epochs(frozen, ssdh) == 7
    assert feature_cache.cached_epochs(frozen, uh) == 0  # its loss needs the pixels
    warmup = resolve_config(sets=["backbone_warmup_epochs=3", "epochs=7"], recipe=False)
    assert feature_cache.cached_epochs(warmup, ssdh) == 3
    for sets in (["freeze_backbone=false"], ["freeze_backbone=true", "feature_cache=false"],
                 ["freeze_backbone=true", "augmentation.flip=horizontal"],
                 ["backbone_warmup_epochs=3", "augmentation.flip=horizontal"]):
        assert feature_cache.cached_epochs(resolve_config(sets=sets, recipe=False), ssdh) == 0


def test_a_warm_up_trains_on_the_cache_then_the_backbone_joins_on_images(tmp_path,
                                                                         monkeypatch):
    """backbone_warmup_epochs: the frozen epochs train on stored features, the rest on
    images with the backbone learning; the run is the run trained on images throughout
    (same weights, same validation history)."""
    from keras_hashing.models.methods.base import HashingModel

    calls, heads = [], []
    real_head = HashingModel.head_arrays

    def counted_head(self, features, batch_size=1024):
        heads.append(len(features))
        return real_head(self, features, batch_size)

    monkeypatch.setattr(HashingModel, "head_arrays", counted_head)
    sets = ["backbone_warmup_epochs=1"]
    cached = _fit(tmp_path, "cached", True, monkeypatch, calls, sets=sets, epochs=3)
    assert [c[0] for c in calls] == [cached.metrics["num_train"], cached.metrics["num_val"]]
    assert heads  # the warm-up epoch was scored on the features (validation, TensorBoard)
    online = _fit(tmp_path, "online", False, monkeypatch, calls, sets=sets, epochs=3)
    assert len(calls) == 2
    np.testing.assert_allclose(cached.metrics["validation"]["map_all_per_epoch"],
                               online.metrics["validation"]["map_all_per_epoch"], atol=2e-3)
    history = cached.metrics["validation"]["map_all_per_epoch"]
    assert len(history) == 3 and history[2] > history[0] + 0.05  # it learned
    for a, b in zip(cached.model.get_weights(), online.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-3)
    # the backbone learned after the warm-up
    fresh = _fit(tmp_path, "frozen", True, monkeypatch, calls, sets=["freeze_backbone=true"],
                 epochs=1)
    moved = [not np.allclose(a, b) for a, b in zip(cached.model.backbone.get_weights(),
                                                     fresh.model.backbone.get_weights())]
    assert any(moved)


def test_early_stopping_within_the_cached_warm_up_ends_the_run_there(tmp_path, monkeypatch):
    """Stopped in the epochs on stored features, the run ends as one fit would: no epoch on
    images, the best epoch restored, the projector written."""
    calls = []
    stopped = _fit(tmp_path, "stopped", True, monkeypatch, calls, epochs=6,
                   sets=["backbone_warmup_epochs=4", "patience=1", "learning_rate=0.0"])
    validation = stopped.metrics["validation"]
    assert stopped.metrics["epochs_run"] == 2  # epoch 2 did not beat epoch 1
    assert validation["best_epoch"] == 1
    assert (tmp_path / "stopped" / "logs" / "hashing" / "projector_config.pbtxt").is_file()
