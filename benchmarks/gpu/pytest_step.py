"""Step 1 of the GPU check: ``pytest -m gpu tests/test_gpu.py tests/test_batch_augment.py`` with a per-test timeout, its outcome per test
read from the JUnit XML that pytest writes."""

from __future__ import annotations

import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from gpu.procs import python_cmd, run_boxed


def junit_outcomes(xml_path: Path) -> list[dict[str, Any]]:
    """``[{"test", "outcome", "seconds", "message"}]`` from a JUnit XML file (empty when there is none)."""
    if not xml_path.is_file():
        return []
    rows = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                outcome, message = kind, (el.get("message") or "")[:300]
                break
        rows.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                     "message": message})
    return rows


def log_outcomes(log: Path) -> list[dict[str, Any]]:
    """Outcomes from pytest's verbose lines, for a run stopped before it wrote its XML."""
    rows = []
    for m in re.finditer(r"^tests/\S+::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", log.read_text(), re.MULTILINE):
        outcome = {"PASSED": "passed", "FAILED": "failure", "SKIPPED": "skipped", "ERROR": "error"}[m.group(2)]
        rows.append({"test": m.group(1), "outcome": outcome, "seconds": None, "message": "from the log"})
    return rows


def run_gpu_tests(repo: Path, env: dict[str, str], log: Path, xml_path: Path, timeout_s: float,
                  per_test_s: float) -> dict[str, Any]:
    """Run the ``gpu`` tests; the per-test timeout needs pytest-timeout (used when installed)."""
    args = ["-m", "pytest", "-m", "gpu", "-v", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml_path}",
            "tests/test_gpu.py", "tests/test_batch_augment.py"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        args += [f"--timeout={per_test_s:.0f}"]
    xml_path.unlink(missing_ok=True)  # only this run's outcomes count
    r = run_boxed(python_cmd(*args), log, timeout_s, env=env, cwd=repo, title="GPU tests")
    tests = junit_outcomes(xml_path) or log_outcomes(log)
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failure", "error", "skipped")}
    return {**r, "per_test_timeout_s": per_test_s if "--timeout" in " ".join(args) else None, "counts": counts,
            "tests": tests}
