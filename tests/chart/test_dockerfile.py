"""The Dockerfile: multi-stage, pinned base and dependencies (hash-checked), non-root by default, two images."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.deploy.kubelet import image_config

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_is_multi_stage_pinned_and_non_root():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert re.findall(r"^USER\s+(\S+)", text, re.M)[-1] == "65532:65532"
    assert "COPY --from=build" in text


def _pins(name):
    pins = {}
    for line in (ROOT / "docker" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, _, version = line.partition("==")
            assert version, f"{name}: {line} is not pinned"
            pins[_canonical(package)] = version
    return pins


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_closure(names):
    """The packages `names` pull in on this platform, from the installed metadata (no index needed)."""
    seen, todo = set(), list(names)
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_image_requirements_pin_every_runtime_dependency_and_what_they_pull_in():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_canonical(re.split(r"[<>=!\s;\[]", dep, maxsplit=1)[0]) for dep in project["dependencies"]}
    direct, constraints = _pins("requirements.txt"), _pins("constraints.txt")
    assert wanted == set(direct)
    assert all(constraints[name] == version for name, version in direct.items())
    missing = _installed_closure(wanted) - set(constraints)
    assert not missing, f"add to docker/constraints.txt: {sorted(missing)}"


def _lock(role):
    """name -> (version, hashes) of docker/<role>.lock.txt."""
    pins = {}
    text = (ROOT / "docker" / f"{role}.lock.txt").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            spec, *options = line.split()
            package, _, version = spec.partition("==")
            hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:")]
            assert version and hashes and len(hashes) == len(options), f"{role}.lock.txt: {line}"
            assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), line
            pins[_canonical(package)] = (version, hashes)
    return pins


def test_lock_files_pin_and_hash_what_the_requirements_pull_in():
    # scripts/lock-image-requirements.py writes them; after a pin changes, run it again.
    constraints = _pins("constraints.txt")
    for role, source in (("operator", "requirements.txt"), ("sidecar", "sidecar-requirements.txt")):
        lock = _lock(role)
        direct = _pins(source)
        assert all(lock[name][0] == version for name, version in direct.items()), role
        assert all(constraints[name] == version for name, (version, _) in lock.items()), role
        assert _installed_closure(direct) == set(lock), f"{role}: run scripts/lock-image-requirements.py"
    operator = _lock("operator")
    assert set(_lock("sidecar")) < set(operator)
    assert not {"kopf", "kubernetes", "aiohttp", "prometheus-client"} & set(_lock("sidecar"))
    # The build backend is pinned and satisfies the project's build requirements.
    build = _lock("build")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert set(build) == {_canonical(Requirement(r).name) for r in requires}
    assert all(Requirement(r).specifier.contains(build[_canonical(Requirement(r).name)][0]) for r in requires)


def test_sidecar_image_requirements_cover_what_the_sidecar_imports():
    third_party = set()
    for path in (ROOT / "sidecar" / "ipsec_mesh").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                third_party.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                third_party.add(node.module.split(".")[0])
    third_party -= set(sys.stdlib_module_names) | {"ipsec_mesh", "__future__"}
    # _cffi_backend: cffi's C module, a dependency of cryptography (its OpenSSL bindings load it);
    # agent/heap.py calls malloc_trim through it.
    provided = {"cryptography": "cryptography", "pyroute2": "pyroute2", "yaml": "pyyaml", "_cffi_backend": "cffi"}
    # netfilter's own binding is not on the package index: the sidecar stage copies it out of
    # Debian's python3-nftables, beside libnftables1.
    from_debian = {"nftables": "python3-nftables"}
    assert third_party <= set(provided) | set(from_debian), sorted(third_party - set(provided) - set(from_debian))
    assert set(_pins("sidecar-requirements.txt")) == {provided[m] for m in third_party if m in provided}
    sidecar_stage = re.search(r"^FROM runtime AS sidecar$(.*?)^FROM ", (ROOT / "Dockerfile").read_text(), re.M | re.S)
    for module in third_party & set(from_debian):
        assert from_debian[module] in sidecar_stage.group(1)
    assert "libnftables1" in sidecar_stage.group(1)


def test_builds_are_offline_capable_hash_checked_and_labelled():
    text = (ROOT / "Dockerfile").read_text()
    # A `# syntax=` directive makes BuildKit pull a frontend image: offline builds fail.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I)
    assert {"sidecar", "operator"} <= set(stages)
    script = (ROOT / "docker" / "build-venv.sh").read_text()
    assert "--require-hashes --only-binary=:all: -r docker/build.lock.txt" in script
    assert '--require-hashes --only-binary=:all: -r "docker/$role.lock.txt"' in script
    assert "--no-build-isolation" in script and "uninstall --yes setuptools pip" in script
    for role in ("sidecar", "operator"):
        assert f"RUN docker/build-venv.sh deps {role} /opt/ipsec-mesh" in text
        assert f"RUN docker/build-venv.sh project {role} /opt/ipsec-mesh" in text
    assert "python -m pip uninstall --yes --no-cache-dir pip setuptools wheel" in text
    for label, arg in (("source", "SOURCE"), ("version", "VERSION"), ("revision", "REVISION")):
        assert re.search(rf"^ARG {arg}=", text, re.M)
        assert f'org.opencontainers.image.{label}="${{{arg}}}"' in text
    # The default target (the last stage) is the operator, as the chart's default image expects.
    assert stages[-1] == "operator"


def _stage(text, name):
    return re.search(rf"^FROM \S+ AS {name}$(.*?)(?=^FROM |\Z)", text, re.M | re.S).group(1)


def test_images_ship_bytecode_for_what_they_run():
    """python's images delete the standard library's bytecode and the runtime forbids writing it: without a
    compile step every sidecar compiles asyncio, ssl... at start and stays 1.4 MB larger (docs/benchmarks.md)."""
    text = (ROOT / "Dockerfile").read_text()
    runtime, sidecar = _stage(text, "runtime"), _stage(text, "sidecar")
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime  # nothing is written at run time, so it must be there before
    # Both optimisation levels: plain for the operator, -OO for the sidecar (PYTHONOPTIMIZE=2 below).
    assert re.search(r"python -m compileall -q -j 0 -o 0 -o 2 .*\\\s*\n\s*\"\$\(.*sysconfig\.get_path\(\"stdlib\"\)", runtime), \
        runtime
    # The sidecar's venv (pip compiled it without -OO) and Debian's nftables binding, copied in as sources.
    assert re.search(r"compileall -q -j 0 -o 2 \\\s*\n\s*\"\$\(.*purelib.*\)\"", sidecar), sidecar
    assert sidecar.index("cp -r /tmp/nft") < sidecar.index("compileall -q -j 0 -o 2")


def test_sidecar_image_runs_without_docstrings():
    """-OO: 0.7 MB RssAnon per sidecar (docs/benchmarks.md); safe because the sidecar has no `assert`
    (tests/unit/test_sidecar_mesh_imports.py); the operator is not measured and runs plain."""
    assert image_config("sidecar").env.get("PYTHONOPTIMIZE") == "2"
    assert "PYTHONOPTIMIZE" not in image_config("operator").env


def test_sidecar_image_fixes_glibc_trim_threshold():
    """Without it glibc's dynamic threshold keeps freed heap: 0.3 MB RssAnon per pod (docs/benchmarks.md)."""
    assert image_config("sidecar").env.get("MALLOC_TRIM_THRESHOLD_") == "131072"
    assert "MALLOC_TRIM_THRESHOLD_" not in image_config("operator").env  # not measured there
