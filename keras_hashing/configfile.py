"""YAML configuration files, read through one gate: bounded (no alias bombs), errors that
name the file, and ``1e-5`` read as the float it means. Written sorted, plainly.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.yaml")
    >>> _ = open(path, "w").write(dump({"lr": 1e-5, "bits": 32}))
    >>> load_yaml(path)
    {'bits': 32, 'lr': 1e-05}
"""

from __future__ import annotations

import re

import yaml

from keras_hashing.errors import ConfigError
from keras_hashing.fileio import read_user_file


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` and ``4e-6`` as floats.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so
    ``lambda1: 1e-5`` loaded as the string "1e-5" and failed deep in training.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


# A config is a few dozen values. YAML aliases can make a small file expand without
# bound ("billion laughs": 9 levels of 10 aliases are 10^9 values) or into a cycle, and
# everything that walks the result (merging, dumping, validating) would run for minutes.
MAX_CONFIG_VALUES = 100_000


def parse_yaml(stream, source="config"):
    """The YAML in ``stream`` (a string or file), refused past MAX_CONFIG_VALUES values."""
    data = yaml.load(stream, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    if expanded_size(data, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ConfigError(f"{source}: expands to more than {MAX_CONFIG_VALUES:,} values "
                          "through YAML aliases (&anchor / *alias); refused")
    return data


def expanded_size(data, limit: int) -> int:
    """How many values ``data`` holds once every alias is expanded, counting stops just
    past ``limit`` (a cycle is unbounded)."""
    count, stack = 0, [data]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)
    return count


def load_yaml(path) -> dict:
    """A YAML mapping from ``path``; errors name the file."""
    def parse(f):
        try:
            return parse_yaml(f, str(path))
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"{path}: not valid YAML ({first})") from None

    data = read_user_file(path, parse, "a YAML config", ConfigError, "r")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of key: value")
    return data


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=True, default_flow_style=False)
