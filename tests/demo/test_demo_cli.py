"""The demo's command line and configuration, without namespaces (the VM test runs it for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsec_mesh_operator import cli
from ipsec_mesh_operator.demo import runner, vm
from ipsec_mesh_operator.demo.runner import DEFAULT_CONFIG, load_config


def test_embedded_default_describes_a_peering_and_an_outsider():
    config = load_config(DEFAULT_CONFIG)
    assert [p.name for p in config.pods] == ["web", "db", "intruder"]
    (peering, peers), = config.peers_of("web")
    assert peering.name == "web-db" and [p.name for p in peers] == ["db"]
    assert [p.name for _, ps in config.peers_of("intruder") for p in ps] == ["web", "db"]
    assert config.identity("web") == "web.default.pod.demo.mesh.local"


def test_bad_config_is_refused_with_the_field(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    bad = tmp_path / "demo.yaml"
    bad.write_text("network: 10.42.0.0/24\npods: [{name: a, address: 10.9.9.9}, {name: b, address: 10.42.0.2}]\n"
                   "peerings: [{name: p, members: [a, b]}]\n")
    assert cli.main(["demo", "--config", str(bad)]) == 2
    assert "pods[0].address" in capsys.readouterr().err


def test_without_esp_the_demo_reruns_itself_in_the_vm(monkeypatch, capsys):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner, "kernel_has_esp", lambda: False)
    calls = []
    monkeypatch.setattr(vm, "run_in_vm", lambda argv: calls.append(argv) or 0)
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "has XFRM but no ESP" in out and "inside a VM" in out
    (argv,) = calls
    assert argv[1:5] == ["-m", "ipsec_mesh_operator.cli", "demo", "--no-vm"]
    assert Path(argv[-1]) == DEFAULT_CONFIG.resolve()


def test_no_vm_flag_refuses_instead(monkeypatch, capsys):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner, "kernel_has_esp", lambda: False)
    assert cli.main(["demo", "--no-vm"]) == 2
    assert "no ESP" in capsys.readouterr().err


def test_needs_root(monkeypatch, capsys):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 1000)
    assert cli.main(["demo"]) == 2
    assert "as root" in capsys.readouterr().err


def test_a_kernel_with_esp_is_found_when_installed():
    if not list(Path("/boot").glob("vmlinuz-*")):
        pytest.skip("no kernel in /boot")
    assert vm.kernel_with_esp().name.startswith("vmlinuz-")


def test_cli_help_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0 and "demo" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
