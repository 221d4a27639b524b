import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_set_up_commands_are_what_ci_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    commands = re.findall(r"^       (pip install .+)$", readme, flags=re.M)
    assert commands[:2] == ['pip install -e . && keras-hashing fit --method ssdh',
                            'pip install -e ".[test]" && pytest']
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert commands[1] in ci.splitlines()


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, digits):
    """README's Python API block, run as written (only shortened to one epoch and
    written under tmp_path), with digits images as the database and the queries."""
    import keras_hashing as kh

    readme = open(os.path.join(ROOT, "README.md")).read()
    (block,) = re.findall(r"^## Python API\n\n```python\n(.+?)```", readme, flags=re.M | re.S)
    resolve = kh.resolve_config
    monkeypatch.setattr(kh, "resolve_config", lambda overrides: resolve(
        overrides={**overrides, "epochs": 1, "steps_per_epoch": 3, "tensorboard_samples": 20}))
    monkeypatch.chdir(tmp_path)
    namespace = {"database_images": digits.database.x[:300],
                 "database_labels": digits.database.y[:300],
                 "query_images": digits.query.x[:10]}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["ids"].shape == (10, 10)
    assert (tmp_path / "runs" / "d32" / "model.keras").is_file()
