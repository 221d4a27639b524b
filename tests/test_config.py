import pytest

from keras_hashing import config
from keras_hashing.errors import ConfigError


def test_layering_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("bits: 16\nepochs: 3\nparams: {beta: 0.1}\n")
    cfg = config.resolve_config(str(f), {"epochs": 5}, ["params.gamma=2", "seed=7"])
    assert (cfg["bits"], cfg["epochs"], cfg["seed"]) == (16, 5, 7)
    assert cfg["params"] == {"beta": 0.1, "gamma": 2}


def test_recipe_is_found_for_method_and_dataset():
    path = config.recipe_path("ssdh", "fashion_mnist")
    assert path and path.endswith("configs/ssdh_fashion_mnist.yaml")
    cfg = config.resolve_config(overrides={"dataset": "fashion_mnist"})
    assert cfg["backbone"] == "lenet" and cfg["protocol"] == "fmnist"


@pytest.mark.parametrize("sets, message", [
    (["colour=red"], "unknown config key"),
    (["bits=0"], "out of range"),
    (["epochs=0"], "epochs must be an integer >= 1"),
    (["optimizer=adagrad"], "optimizer 'adagrad' unknown"),
    (["method=foo"], "unknown method 'foo'"),
    (["learning_rate=-1"], "learning_rate must be a non-negative"),
    (["image_size=[3]"], "image_size must be"),
    (["noequals"], "key=value"),
    (["augmentation.blur=0.1"], r"unknown augmentation\(s\) \['blur'\]; valid"),
    (["augmentation.zoom=2"], "augmentation zoom must be a number in"),
    (["augmentation.flip=sideways"], "augmentation flip must be"),
    (["features_from=[1]"], "features_from must be a string"),
])
def test_bad_values_rejected_with_valid_choices(sets, message):
    with pytest.raises(ConfigError, match=message):
        config.resolve_config(sets=sets)


def test_bad_yaml_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("bits: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        config.resolve_config(str(f))
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        config.resolve_config(str(f))


def test_every_method_has_a_valid_recipe_per_dataset():
    import glob
    import os

    from keras_hashing.methods import get_method, method_names

    recipes = glob.glob(os.path.join(config.recipe_dirs()[0], "*.yaml"))
    assert recipes
    for path in recipes:
        cfg = config.resolve_config(path)
        defaults = get_method(cfg["method"]).default_params
        # every method hyperparameter is spelled out, named as the method names it
        assert set(cfg["params"]) == set(defaults), path
    for method in method_names():
        for dataset in ("digits", "fashion_mnist"):
            assert config.recipe_path(method, dataset), (method, dataset)
