"""YAML files are read through libyaml: same documents as PyYAML's safe_load, less heap left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ipsec_mesh.meshapi.documents import NotYaml, load_yaml

REPO = Path(__file__).resolve().parents[2]
SIDECAR = REPO / "sidecar"
EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.yaml")) + [REPO / "operator/ipsec_mesh_operator/demo/default.yaml"]
TRICKY = [
    "a: &x {b: [1, 2.5, 1e3, 0x1f, 0o17, 017, .inf, -.nan]}\nc: *x\n",  # anchors, YAML 1.1 numbers
    "yes: no\non: off\n~: null\nd: 2026-12-01\nt: 2026-12-01T10:00:00Z\n",  # booleans, null, timestamps
    "s: 'quoted'\nu: \"\\u00e9\\t\"\nm: |\n  two\n  lines\nf: >\n  folded\n  text\n",
    "- [a, b]\n- {k: v}\n- !!str 123\n- !!binary aGk=\n",
    '{"json": [1, "two", null, true], "nested": {"x": 1.0}}',
    "",  # empty file: None
]
HOSTILE = ["a: [1, 2", "a: b: c", "- a\nb: c", "!!python/object:os.system 'true'", "a: *missing", "\t- tab"]


@pytest.mark.parametrize("text", [p.read_text() for p in EXAMPLES] + TRICKY, ids=[p.name for p in EXAMPLES] +
                         [f"tricky{i}" for i in range(len(TRICKY))])
def test_the_same_documents_as_pyyaml_safe_load(text):
    assert yaml.__with_libyaml__  # the sidecar image's PyYAML wheel has it; so does this machine's
    assert _outcome(load_yaml, text, NotYaml) == _outcome(yaml.safe_load, text, yaml.YAMLError)


def _outcome(load, text: str, error: type[Exception]) -> str:
    """The document as text, or that it was refused (a stream of several documents...)."""
    try:
        return repr(load(text))  # repr: NaN, bool and None keys, dates compare as text
    except error:
        return "refused"


@pytest.mark.parametrize("text", HOSTILE)
def test_what_safe_load_refuses_is_refused_with_a_typed_error(text):
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    with pytest.raises(NotYaml):
        load_yaml(text)


PROBE = """
import gc, json, sys
import yaml
from ipsec_mesh.meshapi.documents import load_yaml
peers = [{"name": f"p{i}", "addresses": [f"10.1.{i // 256}.{i % 256}/32"], "identities": [f"p{i}.ns.pod.mesh.test"]}
         for i in range(1000)]
text = yaml.safe_dump({"peerMap": {"peerings": [{"name": "all", "peers": peers}]}})
def anon():
    gc.collect()
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon"))
before = anon()
document = load_yaml(text) if sys.argv[1] == "ours" else yaml.safe_load(text)
print(anon() - before)
"""


def _heap_growth(which: str) -> int:
    result = subprocess.run([sys.executable, "-c", PROBE, which], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(SIDECAR), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_a_thousand_peer_document_leaves_less_heap_than_safe_load():
    # Fresh interpreters side by side, the same document: RssAnon growth while the result is held.
    ours, pure = _heap_growth("ours"), _heap_growth("safe_load")
    assert ours < 0.75 * pure, (ours, pure)
