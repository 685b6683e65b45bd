"""Smoke test of bench/ab_ike_engines.py: this checkout against itself, a handful of IKE SAs.

No timing assertions (a few SAs mean nothing): both engines establish every IKE SA
and a figure is printed for each.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_tool():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("ab_ike_engines", ROOT / "bench" / "ab_ike_engines.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("auth, side", [("psk", "responder"), ("ecdsa", "responder"), ("psk", "initiator")])
def test_both_engines_establish_and_are_reported(capsys, auth, side):
    tool = load_tool()
    assert tool.main([str(ROOT), "--rounds", "2", "--sas", "5", "--window", "5", "--auth", auth,
                      "--side", side]) == 0
    out = capsys.readouterr().out
    assert f"{auth} {side}, 2 rounds of 5 IKE SAs: A " in out and "B/A" in out
    # Three separate imports: the two responders and the load generator share no module.
    assert {"ipsec_mesh_a", "ipsec_mesh_loadgen", "ipsec_mesh"} <= set(sys.modules)
    assert sys.modules["ipsec_mesh_a.ike.endpoint"] is not sys.modules["ipsec_mesh.ike.endpoint"]


def test_an_engine_that_establishes_nothing_is_an_error():
    tool = load_tool()
    bench = tool.Bench(ROOT, "psk", 3, 3)
    bench.configs["A"] = dataclasses.replace(bench.configs["A"], psks=(b"another-psk-0123456789abcdef",))
    with pytest.raises(RuntimeError, match="engine A: 0 of 3"):
        bench.round("A")
    initiating = tool.Bench(ROOT, "psk", 3, 3, "initiator")  # A's initiators, the load generator answering
    initiating.generator_configs["A"] = dataclasses.replace(initiating.generator_configs["A"],
                                                            psks=(b"another-psk-0123456789abcdef",))
    with pytest.raises(RuntimeError, match="engine A: 0 of 3"):
        initiating.round("A")
