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
