"""Host-side checks of the VM runner: finding a kernel, saying what is missing, and
the command line and guest script it builds. No VM is booted here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.runner import (
    KERNEL_ENV,
    VMConfig,
    VMUnavailable,
    command_script,
    find_kernel,
    guest_script,
    kernel_has_esp_modules,
    locate,
    vng_argv,
)


def fake_kernel(boot: Path, modules: Path, version: str, *, esp: str | None) -> Path:
    """A /boot/vmlinuz-<version> with esp4/esp6 as modules, built in, or absent."""
    boot.mkdir(exist_ok=True)
    kernel = boot / f"vmlinuz-{version}"
    kernel.write_bytes(b"")
    moddir = modules / version
    (moddir / "kernel/net/ipv4").mkdir(parents=True)
    (moddir / "kernel/net/ipv6").mkdir(parents=True)
    if esp == "modules":
        (moddir / "kernel/net/ipv4/esp4.ko.xz").write_bytes(b"")
        (moddir / "kernel/net/ipv6/esp6.ko.xz").write_bytes(b"")
    elif esp == "builtin":
        builtin = "kernel/net/ipv4/esp4.ko\nkernel/net/ipv6/esp6.ko\n"
        (moddir / "modules.builtin").write_text(builtin)
    return kernel


def test_find_kernel_prefers_newest_with_esp(tmp_path):
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    fake_kernel(boot, modules, "6.9.0-1-amd64", esp="modules")
    newest_with_esp = fake_kernel(boot, modules, "6.10.0-1-amd64", esp="builtin")
    fake_kernel(boot, modules, "6.11.0-1-amd64", esp=None)

    assert find_kernel(boot, modules) == newest_with_esp
    assert kernel_has_esp_modules("6.9.0-1-amd64", modules)
    assert not kernel_has_esp_modules("6.11.0-1-amd64", modules)


def test_find_kernel_says_what_is_missing(tmp_path):
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    with pytest.raises(VMUnavailable, match="no kernel image .*linux-image-amd64"):
        find_kernel(boot, modules)
    fake_kernel(boot, modules, "6.1.0-1-amd64", esp=None)
    with pytest.raises(VMUnavailable, match="no kernel in .* has esp4/esp6 modules"):
        find_kernel(boot, modules)


def test_locate_reports_a_bad_kernel_override(tmp_path):
    env = {KERNEL_ENV: str(tmp_path / "vmlinuz-missing"), "PATH": ""}
    with pytest.raises(VMUnavailable, match=f"{KERNEL_ENV}=.* is not a file"):
        locate(env, rootdir=tmp_path)


def test_vng_command_and_guest_script(tmp_path):
    config = VMConfig(
        vng=Path("/venv/bin/vng"), qemu=Path("/usr/bin/qemu-system-x86_64"),
        kernel=Path("/boot/vmlinuz-6.1.0-56-amd64"),
    )
    rundir, rootdir = tmp_path / "run dir", Path("/work/wt/vm")
    argv = vng_argv(config, rundir, rootdir)
    assert argv[:3] == ["/venv/bin/vng", "--disable-kvm", "--force-9p"]
    assert argv[argv.index("--rwdir") + 1] == str(rundir)
    assert argv[argv.index("--memory") + 1] == "2G" and argv[argv.index("--cpus") + 1] == "2"
    assert argv[-1] == f"sh '{rundir}/guest.sh'"

    files = ["tests/vm/test_kernel_esp.py"]
    script = guest_script(config, rundir, rootdir, files, "/venv/bin/python")
    assert "export IPSEC_MESH_IN_VM=1" in script
    assert "modprobe -a esp4 esp6" in script
    assert "cd /work/wt/vm || exit 90" in script
    assert "/venv/bin/python -m pytest -p no:cacheprovider -p pytest_asyncio.plugin" in script
    assert script.rstrip().endswith("exit $status")


def test_a_command_script_runs_one_command_with_the_tier_environment_and_records_its_status(tmp_path):
    """What benchmarks boot the VM for (bench/bench_sidecar_memory_vm.py): one command, not pytest."""
    config = VMConfig(vng=Path("/venv/bin/vng"), qemu=Path("/usr/bin/qemu-system-x86_64"),
                      kernel=Path("/boot/vmlinuz-6.1.0-56-amd64"), guest_modules=("esp4", "bridge"))
    rundir, rootdir = tmp_path / "run", Path("/work/wt/vm")
    script = command_script(config, rundir, rootdir, ["/venv/bin/python", "bench/x.py", "--guest", str(rundir)],
                            "/venv/bin/python", {"A": "b c"}, "bench")
    lines = script.splitlines()
    assert "export IPSEC_MESH_IN_VM=1" in lines and "export A='b c'" in lines
    assert "export PATH=/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin" in lines
    assert "modprobe -a esp4 bridge || echo 'modprobe failed' >&2" in lines
    command = lines.index(f"/venv/bin/python bench/x.py --guest {rundir}")
    assert lines[command - 2] == "cd /work/wt/vm || exit 90" and lines[command + 1] == "status=$?"
    assert f"echo $status > {rundir}/exit_status" in lines and " -m pytest" not in script
