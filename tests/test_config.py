import pytest

from keras_hashing.training import config
from keras_hashing.errors import ConfigError


def test_layering_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("bits: 16\nepochs: 3\nparams: {beta: 0.1}\n")
    cfg = config.resolve_config(str(f), {"epochs": 5}, ["params.gamma=2", "seed=7"])
    assert (cfg["bits"], cfg["epochs"], cfg["seed"]) == (16, 5, 7)
    assert cfg["params"] == {"beta": 0.1, "gamma": 2}


def test_recipe_is_found_for_method_and_dataset():
    path = config.recipe_path("ssdh", "fashion_mnist")
    assert path and path.endswith("recipes/ssdh_fashion_mnist.yaml")
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

    from keras_hashing.models.methods import get_method, method_names

    recipes = glob.glob(os.path.join(config.RECIPES_DIR, "*.yaml"))
    assert recipes
    for path in recipes:
        cfg = config.resolve_config(path)
        defaults = get_method(cfg["method"]).default_params
        # every method hyperparameter is spelled out, named as the method names it
        assert set(cfg["params"]) == set(defaults), path
    for method in method_names():
        for dataset in ("digits", "fashion_mnist"):
            assert config.recipe_path(method, dataset), (method, dataset)


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) alone reads these as strings; eta="4e-6" then failed in the
    # first training step with a TensorFlow TypeError.
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 1e-3\nparams: {beta: 2E+1}\n")
    cfg = config.resolve_config(str(f), sets=["weight_decay=5e-4", "params.alpha=4e-6"])
    assert (cfg["learning_rate"], cfg["weight_decay"]) == (1e-3, 5e-4)
    assert cfg["params"] == {"beta": 20.0, "alpha": 4e-6}
    assert config.parse_sets(["a=12", "b=abc", "c=1.5"]) == {"a": 12, "b": "abc", "c": 1.5}


@pytest.mark.parametrize("params, message", [
    ({"eta": "abc"}, "dpsh parameter eta must be a number, got 'abc'"),
    ({"memory_bank": 1}, "dpsh parameter memory_bank must be true or false"),
    ({"num_train": 2.5}, "dpsh parameter num_train must be an integer"),
])
def test_method_parameters_of_the_wrong_kind_are_rejected(params, message):
    from keras_hashing.models.methods.dpsh import DPSH

    with pytest.raises(ConfigError, match=message):
        DPSH(bits=16, input_shape=(8, 8, 1), num_classes=10, params=params)
    model = DPSH(bits=16, input_shape=(8, 8, 1), num_classes=10,
                 params={"eta": 5, "num_train": 100, "memory_bank": True})
    assert model.params["eta"] == 5


@pytest.mark.parametrize("sets, message", [
    (["params.nope=1"], "unknown ssdh parameter"),
    (["method=sdsh", "bits=1"], "sdsh needs codes of at least 2 bits"),
    (["seed=4294967296"], "seed must be an integer >= 0 and below 4,294,967,296"),
    (["seed=-1"], "seed must be an integer >= 0"),
    (["bits=" + "9" * 5000], "code length must be an integer"),
    (["epochs=" + "9" * 5000], "epochs must be an integer"),
    (["image_size=32"], "image_size applies to image files"),
    (["channels=3"], "channels applies to image files"),
    (["unseen_fold=1"], "unseen_fold applies to"),
    (["validation=maybe"], "validation must be auto"),
    (["protocol=cifar10", "dataset=tfds:cifar10", "patience=3"], "patience stops on"),
    (["method=dpsh", "params.eta=abc"], "dpsh parameter eta"),
])
def test_config_show_refuses_exactly_what_fit_refuses(sets, message, tmp_path, capsys):
    """One gate for settings: `config show` and `fit` print the same one line and exit 2,
    and the refused fit leaves no run folder behind."""
    from keras_hashing.cli.main import main

    argv = [a for s in sets for a in ("--set", s)]
    assert main(["config", "show", *argv]) == 2
    shown = capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["fit", "--out", str(tmp_path / "run"), "--quiet", *argv]) == 2
    fitted = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in shown and shown == fitted and len(shown) < 400
    assert not (tmp_path / "run").exists()
