"""YAML documents (the `run` configuration, settings and peer-map files), read through libyaml.

PyYAML's pure-Python SafeLoader builds a node for every scalar in Python before
constructing the result: for a peer map of 1,000 peers that leaves about 5 MB of heap
behind in a process that lives as long as the pod; libyaml's parser (CSafeLoader, the same
safe constructor and resolver) leaves about 3 MB. PyYAML is imported on first use: a
mesh-mode sidecar without a settings file never loads it.
"""

from __future__ import annotations

from typing import Any


class NotYaml(ValueError):
    """The text is not a YAML document (the parser's message, with line and column)."""


def load_yaml(text: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # PyYAML built without libyaml: pure Python
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise NotYaml(str(exc)) from None
