"""The repository's DVC settings that every clone inherits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def reports_written_by_dvc(repo: Path, tmp: Path, *args: str) -> list[str]:
    """Run a read-only dvc command in ``repo`` with analytics left to the config, and list what
    it wrote into ``tmp`` (DVC writes each usage report there before its daemon sends it)."""
    tmp.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "DVC_NO_ANALYTICS"}
    env["TMPDIR"] = str(tmp)
    subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, check=True, capture_output=True
    )
    return sorted(path.name for path in tmp.iterdir())


def test_dvc_commands_in_a_clone_send_no_usage_report(tmp_path: Path) -> None:
    # Teams train on patients' images on machines that may not talk to dvc.org. (With pip's DVC
    # 3.67 on Python 3.11 the daemon that would send the report dies on start-up, leaving one
    # file in /tmp per command: about a thousand per run of this suite.)
    assert reports_written_by_dvc(REPO_ROOT, tmp_path / "repo", "config", "core.remote") == []


def test_a_repository_without_the_setting_writes_a_report(tmp_path: Path) -> None:
    """The check above can fail: a fresh `dvc init` repository does write one."""
    bare = tmp_path / "bare"
    bare.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=bare, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=bare, check=True)
    assert len(reports_written_by_dvc(bare, tmp_path / "bare-tmp", "config", "--list")) == 1
