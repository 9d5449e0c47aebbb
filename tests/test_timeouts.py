"""The per-test timeout (pytest-timeout, pyproject and tests/conftest.py): a hung test fails
instead of waiting out CI, and `slow` tests get longer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from tests.conftest import REPO_ROOT, SLOW_TIMEOUT_S

HANGING = """
import time

import pytest


def test_hangs():
    time.sleep(120)


@pytest.mark.slow
def test_slow_outlives_the_default():
    time.sleep(4)
"""


def test_a_hanging_test_is_stopped_and_a_slow_one_gets_longer(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    (tmp_path / "test_hang.py").write_text(HANGING)
    # tests.conftest as a plugin brings the `slow` hook; --timeout stands in for pyproject's.
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "--timeout", "2"]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = time.monotonic()
    done = subprocess.run(
        [*command, "-p", "no:cacheprovider", "-rA", str(tmp_path / "test_hang.py")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,  # the run is meant to fail
    )
    assert time.monotonic() - started < 60  # not the 120 s the test sleeps
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout (>2.0s)" in done.stdout
    assert "FAILED test_hang.py::test_hangs" in done.stdout
    assert "PASSED test_hang.py::test_slow_outlives_the_default" in done.stdout


def test_pyproject_sets_a_default_shorter_than_the_slow_one() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert 0 < int(pyproject["tool"]["pytest"]["ini_options"]["timeout"]) < SLOW_TIMEOUT_S
