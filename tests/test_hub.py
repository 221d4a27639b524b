"""hub: backbones (KerasHub presets), tested on tiny DINOv2 and SigLIP models built from
their configs and saved as local presets: fit, the preset's weights, a saved run, the
SavedModel export, the training-free baseline, and the one-line errors."""

import os
import sys

import numpy as np
import pytest

from keras_hashing.errors import ConfigError, DataError

keras_hub = pytest.importorskip("keras_hub")


def _dino_preset(path, seed=0, version=2):
    import keras

    keras.utils.set_random_seed(seed)
    sizes = dict(patch_size=4, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                 image_shape=(16, 16, 3))
    normalise = dict(image_size=(16, 16),
                     scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
                     offset=[-m / s for m, s in ((0.485, 0.229), (0.456, 0.224),
                                                 (0.406, 0.225))])
    if version == 2:
        backbone = keras_hub.models.DINOV2Backbone(position_embedding_shape=(16, 16, 3),
                                                   **sizes)
        converter = keras_hub.layers.DINOV2ImageConverter(**normalise)
    else:  # CLS, then register tokens, then patches
        backbone = keras_hub.models.DINOV3Backbone(num_register_tokens=2, **sizes)
        converter = keras_hub.layers.DINOV3ImageConverter(**normalise)
    backbone.save_to_preset(str(path))
    converter.save_to_preset(str(path))
    return str(path)


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    return _dino_preset(tmp_path_factory.mktemp("presets") / "dino_tiny")


@pytest.mark.parametrize("version", [2, 3])
def test_a_hub_backbone_is_the_presets_converter_tower_and_cls_token(version, tmp_path):
    from keras_hashing.models.backbones import build_backbone, load_pretrained

    dino = _dino_preset(tmp_path / f"dinov{version}", version=version)
    net = build_backbone(f"hub:{dino}", (8, 8, 1))
    assert tuple(net.output.shape) == (None, 16)  # the CLS token of a 16-d model
    load_pretrained(net, f"hub:{dino}", "preset")
    tower = keras_hub.models.Backbone.from_preset(dino)
    converter = keras_hub.layers.ImageConverter.from_preset(dino)
    images = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
    grey = np.repeat(images * 255.0, 3, axis=-1)
    (name,) = tower.input.keys()
    expected = np.asarray(tower({name: converter(grey)}))[:, 0]
    np.testing.assert_allclose(np.asarray(net(images)), expected, atol=1e-5)


def _two_tower_preset(path, family):
    """A tiny CLIP, MetaCLIP 2 or SigLIP preset (its text tower only makes the backbone
    whole)."""
    sizes = dict(hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32)
    text = dict(vocabulary_size=50, embedding_dim=16, max_sequence_length=8, **sizes)
    if family == "clip":
        vision = keras_hub.models.CLIPVisionEncoder(patch_size=4, image_shape=(16, 16, 3),
                                                    **sizes)
        keras_hub.models.CLIPBackbone(vision, keras_hub.models.CLIPTextEncoder(**text),
                                      projection_dim=12).save_to_preset(str(path))
        converter = keras_hub.layers.CLIPImageConverter(image_size=(16, 16), scale=1 / 255)
    elif family == "metaclip2":
        vision = keras_hub.models.MetaCLIP2VisionEncoder(patch_size=4,
                                                         image_shape=(16, 16, 3), **sizes)
        keras_hub.models.MetaCLIP2Backbone(
            vision, keras_hub.models.MetaCLIP2TextEncoder(**text), projection_dim=10
        ).save_to_preset(str(path))
        converter = keras_hub.layers.MetaCLIP2ImageConverter(image_size=(16, 16),
                                                             scale=1 / 255)
    else:
        vision = keras_hub.models.SigLIPVisionEncoder(patch_size=4, image_shape=(16, 16, 3),
                                                      **sizes)
        keras_hub.models.SigLIPBackbone(vision, keras_hub.models.SigLIPTextEncoder(**text)
                                        ).save_to_preset(str(path))
        converter = keras_hub.layers.SigLIPImageConverter(image_size=(16, 16),
                                                          scale=1 / 127.5, offset=-1.0)
    converter.save_to_preset(str(path))
    return str(path)


@pytest.mark.parametrize("family, dim", [("clip", 12), ("metaclip2", 10), ("siglip", 16)])
def test_clip_and_siglip_give_their_image_embedding(tmp_path, family, dim):
    """CLIP's and MetaCLIP 2's pooled embeddings projected to their joint space (12-d and
    10-d here), SigLIP's pooled one; the preset's trained weights land in the tower, and
    a saved model loads."""
    import keras

    from keras_hashing.models.backbones import build_backbone, load_pretrained

    preset = _two_tower_preset(tmp_path / family, family)
    net = build_backbone(f"hub:{preset}", (8, 8, 3))
    assert tuple(net.output.shape) == (None, dim)
    load_pretrained(net, f"hub:{preset}", "preset")
    trained = keras_hub.models.Backbone.from_preset(preset)
    converter = keras_hub.layers.ImageConverter.from_preset(preset)
    images = np.random.default_rng(1).random((2, 8, 8, 3)).astype("float32")
    expected = np.asarray(trained.get_vision_embeddings(converter(images * 255.0)))
    np.testing.assert_allclose(np.asarray(net(images)), expected, atol=1e-5)
    net.save(tmp_path / "net.keras")
    again = keras.saving.load_model(tmp_path / "net.keras")
    np.testing.assert_allclose(np.asarray(again(images)), expected, atol=1e-5)


def test_fit_with_preset_weights_saves_a_run_that_loads_exports_and_indexes(dino, tmp_path):
    from keras_hashing.cli import main as cli
    from keras_hashing.runs import load_run
    from keras_hashing.serving.export import SavedModelEncoder, export_run
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import build_model
    from keras_hashing.runs import load_splits

    cfg = resolve_config(overrides={"backbone": f"hub:{dino}", "weights": "preset",
                                    "bits": 16, "epochs": 1}, recipe=False)
    model = build_model(cfg, load_splits(cfg))
    preset = keras_hub.models.Backbone.from_preset(dino)
    tower = model.backbone.get_layer("vision_tower").get_layer(preset.name)
    for ours, theirs in zip(tower.get_weights(), preset.get_weights()):
        np.testing.assert_array_equal(ours, theirs)  # --weights preset: the preset's own

    out = tmp_path / "run"
    assert cli.main(["fit", "--backbone", f"hub:{dino}", "--weights", "preset", "--bits",
                     "16", "--epochs", "1", "--set", "val_database_size=200", "--out",
                     str(out), "--quiet"]) == 0
    run = load_run(str(out))
    # a tiny random transformer after one epoch: 0.17 to 0.18 measured (seeds 0, 1);
    # chance on ten classes is 0.10
    assert run.metrics["query"]["map_all"] > 0.12
    splits = load_splits(run.config)
    images = splits.query.x[:20]
    saved = export_run(str(out), base=str(tmp_path / "saved"), name="dino")
    np.testing.assert_array_equal(SavedModelEncoder(saved).encode(images),
                                  run.model.encode(images))
    index = tmp_path / "d.khi"
    assert cli.main(["index", "build", "--run", str(out), "--out", str(index),
                     "--quiet"]) == 0
    assert os.path.getsize(index) > 0


def test_the_training_free_baseline_is_one_command(dino, tmp_path, capsys):
    from keras_hashing.cli import main as cli
    from keras_hashing.runs import load_run

    runs = {}
    for rotate in ("false", "true"):
        out = tmp_path / f"pcah_{rotate}"
        assert cli.main(["fit", "--method", "pcah", "--features-from", f"hub:{dino}",
                         "--bits", "16", "--set", f"params.rotate={rotate}", "--out",
                         str(out), "--quiet"]) == 0
        runs[rotate] = load_run(str(out))
    plain, rotated = (runs[r].model.encode(load_run_images(runs[r])) for r in runs)
    assert plain.shape == rotated.shape and not np.array_equal(plain, rotated)
    assert runs["true"].metrics["query"]["map_all"] > 0.12  # 0.16 to 0.17 measured
    assert runs["true"].config["features_from"] == f"hub:{dino}"


def load_run_images(run):
    from keras_hashing.runs import load_splits

    return load_splits(run.config).query.x[:50]


def test_without_keras_hub_a_hub_backbone_is_one_line_naming_the_extra(monkeypatch):
    from keras_hashing.models.backbones import build_backbone

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub fails
    with pytest.raises(ConfigError, match=r'pip install "keras-hashing\[hub\]"'):
        build_backbone("hub:dinov2_small", (8, 8, 1))


def test_a_preset_that_cannot_download_is_one_line(monkeypatch):
    from keras_hashing.models.backbones import build_backbone

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.kaggle.com' ([Errno -3] Temporary "
                              "failure in name resolution)")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(DataError, match="could not download the preset") as info:
        build_backbone("hub:dinov2_small", (8, 8, 1))
    assert "\n" not in str(info.value)


def test_weights_of_a_hub_backbone_are_the_presets_or_none(dino):
    from keras_hashing.models.backbones import build_backbone, load_pretrained

    net = build_backbone(f"hub:{dino}", (8, 8, 1))
    with pytest.raises(ConfigError, match="weights: preset"):
        load_pretrained(net, f"hub:{dino}", "imagenet")


def test_csq_on_a_folder_trains_from_cached_hub_features_exports_and_serves(dino, tmp_path,
                                                                             monkeypatch):
    """The foundation-model recipe on a user's folder: a frozen hub backbone, the head
    trained on cached features, a SavedModel that encodes as the run does, and the
    search service answering an image with its own copy in the index."""
    from PIL import Image

    from keras_hashing.cli import main as cli
    from keras_hashing.runs import load_run, load_splits
    from keras_hashing.serving.export import SavedModelEncoder, export_run
    from keras_hashing.training import feature_cache

    rng = np.random.default_rng(0)
    for c, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        os.makedirs(tmp_path / "photos" / f"class{c}")
        for i in range(24):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (20, 20, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(
                tmp_path / "photos" / f"class{c}" / f"{i}.png")
    stored = []
    real = feature_cache.split_features
    monkeypatch.setattr(feature_cache, "split_features",
                        lambda *a, **k: stored.append(real(*a, **k)) or stored[-1])
    out = tmp_path / "run"
    assert cli.main(["fit", "--method", "csq", "--dataset", f"folder:{tmp_path / 'photos'}",
                     "--backbone", f"hub:{dino}", "--weights", "preset", "--image-size", "16",
                     "--bits", "16", "--epochs", "2", "--set", "freeze_backbone=true",
                     "--out", str(out), "--quiet"]) == 0
    assert len(stored) == 2 and all(f is not None and f.shape[1] == 16 for f in stored)
    run = load_run(str(out))
    images = load_splits(run.config).query.x
    saved = export_run(str(out), base=str(tmp_path / "saved"), name="photos")
    np.testing.assert_array_equal(SavedModelEncoder(saved).encode(images),
                                  run.model.encode(images))
    # served: an image file of the indexed folder finds itself at distance 0 (k = the
    # whole index: a trained class shares one code, so ties at 0 run past a small k)
    import base64

    from fastapi.testclient import TestClient

    from keras_hashing.encoders import KerasEncoder
    from keras_hashing.serving import service

    index = tmp_path / "photos.khi"
    assert cli.main(["index", "build", "--run", str(out), "--images",
                     f"folder:{tmp_path / 'photos'}", "--out", str(index), "--quiet"]) == 0
    photo = tmp_path / "photos" / "class1" / "3.png"
    with TestClient(service.create_app(str(index), KerasEncoder(run.model))) as client:
        answer = client.post("/v1/search", json={"images": [
            {"b64": base64.b64encode(photo.read_bytes()).decode()}], "k": 72}).json()
    first = answer["results"][0]
    assert first["distances"][0] == 0
    assert str(photo) in [p for p, d in zip(first["paths"], first["distances"]) if d == 0]


def test_a_backbone_of_another_family_is_one_line_naming_those_known():
    from keras_hashing.models.hub_backbones import vision_tower

    vit = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=1,
                                       num_heads=2, hidden_dim=8, mlp_dim=16)
    converter = keras_hub.layers.ImageConverter(image_size=(16, 16))
    with pytest.raises(ConfigError, match="ViTBackbone is not an image backbone") as info:
        vision_tower(vit, converter)
    assert "DINOv2 or DINOv3" in str(info.value) and "\n" not in str(info.value)
