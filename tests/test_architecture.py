"""The layers are kept: import-linter's contracts (pyproject.toml) hold, every module sits
in a layer, the top-level API is lazy, and a wheel carries the recipes."""

import os
import pathlib
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _contracts():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_import_linter_contracts_hold():
    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    os.chdir(ROOT)  # the contracts are read from pyproject.toml beside the package
    try:
        assert lint_imports(no_cache=True, no_logo=True) == 0  # the report is on stdout
    finally:
        os.chdir(cwd)


def test_every_module_is_inside_a_layer():
    """A new module or folder cannot slip past the layers contract unnoticed."""
    layers = next(c for c in _contracts()["contracts"] if c["type"] == "layers")["layers"]
    names = [n.strip() for layer in layers for n in layer.split("|")]
    outside = []
    for path in (ROOT / "keras_hashing").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module.endswith("__init__") or module == "keras_hashing.__main__":
            continue
        if not any(module == n or module.startswith(n + ".") for n in names):
            outside.append(module)
    assert outside == []


def test_public_api_is_lazy_and_complete():
    code = ("import sys, keras_hashing as kh\n"
            "before = 'tensorflow' in sys.modules\n"
            "index = kh.HammingIndex(bits=16)\n"
            "numpy_only = 'tensorflow' in sys.modules\n"
            "from keras_hashing.models.methods import get_method, method_names\n"
            "classes = {get_method(m).__name__ for m in method_names()}\n"
            "missing = sorted(c for c in classes if getattr(kh, c) is not get_method(\n"
            "    [m for m in method_names() if get_method(m).__name__ == c][0]))\n"
            "print(before, numpy_only, missing, all(hasattr(kh, n) for n in kh.__all__),\n"
            "      kh.fit.__module__, kh.load_run.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True)
    assert out.stdout.split() == ["False", "False", "[]", "True",
                                  "keras_hashing.training.fit", "keras_hashing.runs"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import keras_hashing

        keras_hashing.Nope  # noqa: B018


def test_installed_wheel_finds_its_shipped_recipes(tmp_path):
    """Built as a release is and installed outside the checkout, ``config show`` names the
    recipe inside the installed package (a wheel without them trains on defaults)."""
    import shutil

    source = tmp_path / "source"  # a copy: building writes build/ and egg-info beside it
    shutil.copytree(ROOT / "keras_hashing", source / "keras_hashing",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("keras_hashing-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "keras_hashing/recipes/ssdh_fashion_mnist.yaml" in names
    assert "keras_hashing/serving/web/index.html" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    away = tmp_path / "elsewhere"
    away.mkdir()
    out = subprocess.run([sys.executable, "-m", "keras_hashing", "config", "show", "--method",
                          "ssdh", "--dataset", "fashion_mnist"], cwd=away, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr[-2000:]
    first = out.stdout.splitlines()[0]
    shipped = target / "keras_hashing" / "recipes" / "ssdh_fashion_mnist.yaml"
    assert first.endswith(f"recipe: {shipped}"), first
