"""The files that install and check medimg elsewhere: requirements.lock pins what pyproject.toml asks for and is
what this environment runs; pyproject.toml builds without setuptools warnings; the Dockerfile passes hadolint;
the notebook is committed without outputs."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as a package (a dependency of pip-tools and build there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_the_lock_pins_every_requirement_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    wanted = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not in requirements.lock: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, outside {req}: run make lock"
    text = (ROOT / "requirements.lock").read_text()
    assert "--index-url" not in text and "--find-links" not in text  # no machine's own package sources


def test_the_lock_pins_every_package_with_its_hashes():
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pinned = [i for i, line in enumerate(lines) if re.match(r"^[A-Za-z0-9_.\-]+==\S+", line)]
    assert len(pinned) == len(lock_pins()) > 100
    unhashed = [lines[i] for i in pinned if not lines[i].endswith(" \\") or
                not lines[i + 1].strip().startswith("--hash=sha256:")]
    assert not unhashed, f"pins without hashes (make lock): {unhashed[:5]}"
    assert "pip==" in "\n".join(lines) and "setuptools==" in "\n".join(lines)  # --allow-unsafe: all pinned


@pytest.mark.skipif(os.environ.get("LOCKED") == "0", reason="make test LOCKED=0 runs the newest versions")
def test_this_environment_runs_the_locked_versions():
    differ = {}
    for name, version in lock_pins().items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            differ[name] = (version, None)
            continue
        if have.split("+")[0] != version.split("+")[0]:  # a local build tag (torch's +cpu / +cu130) aside
            differ[name] = (version, have)
    assert not differ, f"installed versions differ from requirements.lock (make install): {differ}"


def test_pyproject_builds_without_setuptools_warnings(monkeypatch):
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)  # the readme and package paths are relative to the project
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), str(ROOT / "pyproject.toml"))
    assert not caught, [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught]


def test_the_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    proc = subprocess.run([str(hadolint), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_notebook_is_committed_without_outputs():
    nb = json.loads((ROOT / "notebooks" / "quickstart.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code), \
        "notebooks/quickstart.ipynb has outputs: clear them before committing (the notebook is run by make notebook)"
