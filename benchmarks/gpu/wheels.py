"""The wheels that ``make gpu-check`` installs on a GPU machine whose Python lacks some of medimg's dependencies.

    python benchmarks/gpu/wheels.py pins hydra-core omegaconf      # name==version as installed here
    python benchmarks/gpu/wheels.py check .whl hydra-core omegaconf # one wheel each, installable on CPython 3.12

``check`` fails when a package has no wheel or more than one (two versions stop the whole install there), or
when a wheel cannot install on CPython 3.12 / Linux x86-64; it lists what the wheels require that is not
among them (that must already be on the target machine).
"""

from __future__ import annotations

import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

TARGET_PYTHON = "cp312"  # the GPU machine's CPython
TARGET_ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
              "sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux"}


def pins(names: list[str]) -> list[str]:
    """``name==version`` of each package as installed in this environment (the versions tested here)."""
    return [f"{n}=={version(n)}" for n in names]


def installs_on_target(tags) -> bool:
    """True when one of a wheel's tags fits CPython 3.12 on Linux x86-64 (pure Python, or a manylinux build)."""
    for tag in tags:
        pure = tag.abi == "none" and tag.platform == "any" and tag.interpreter in ("py3", "py312", TARGET_PYTHON)
        binary = (tag.interpreter == TARGET_PYTHON and tag.abi in (TARGET_PYTHON, "abi3")
                  and tag.platform.startswith("manylinux") and tag.platform.endswith("x86_64"))
        if pure or binary:
            return True
    return False


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist entries that apply on the target (extras left out)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**TARGET_ENV, "extra": ""})]


def check(folder: Path, names: list[str]) -> list[str]:
    """Problems with the wheel set in ``folder`` for ``names`` (empty when it is complete); prints what the
    wheels need from the target machine."""
    problems, found, needs = [], {}, set()
    for wheel in sorted(folder.glob("*.whl")):
        name, ver, _, tags = parse_wheel_filename(wheel.name)
        found.setdefault(name, []).append(str(ver))
        if not installs_on_target(tags):
            problems.append(f"{wheel.name} does not install on CPython 3.12 / Linux x86-64")
        needs.update(canonicalize_name(r.name) for r in requirements(wheel))
    for n in names:
        versions = found.get(canonicalize_name(n), [])
        if len(versions) != 1:
            problems.append(f"{n}: {len(versions)} wheels in {folder} ({', '.join(versions) or 'none'}); need one")
    extra = sorted(needs - set(found))
    print(f"{sum(len(v) for v in found.values())} wheels in {folder}; they also need, from the target machine: "
          f"{', '.join(extra) or 'nothing'}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "pins":
        print(" ".join(pins(argv[1:])))
        return 0
    if len(argv) >= 2 and argv[0] == "check":
        problems = check(Path(argv[1]), argv[2:])
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
