"""What every benchmark result records about the code it measured (`benchmarks/common.py`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_a_result_names_the_commit_it_measured(tmp_path):
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    code = common.code_version()
    assert re.fullmatch(r"[0-9a-f]{7,}(\+changes)?", code), code
    assert head.startswith(code.removesuffix("+changes"))
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT).returncode != 0
    assert code.endswith("+changes") == dirty
    path = common.write_result("probe", {"x": 1}, tmp_path)
    written = json.loads(path.read_text())
    assert written["code"] == common.CODE and written["x"] == 1


def test_outside_a_checkout_the_code_is_unknown(monkeypatch, tmp_path):
    fake = tmp_path / "benchmarks" / "common.py"
    fake.parent.mkdir()
    fake.write_text("")
    monkeypatch.setattr(common, "__file__", str(fake))
    assert common.code_version() is None
