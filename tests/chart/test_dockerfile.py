"""The Dockerfile: multi-stage, pinned base and dependencies, non-root by default."""

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

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
    text = (ROOT / "Dockerfile").read_text()
    assert "-c docker/constraints.txt -r docker/requirements.txt" in text and "--only-binary=:all:" in text
