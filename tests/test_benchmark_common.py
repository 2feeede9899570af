"""What every benchmark result records about the code it measured (`benchmarks/common.py`)."""

from __future__ import annotations

import json
import os
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


def test_reading_a_timeline_leaves_dagster_home_as_it_was(tmp_path, monkeypatch):
    """`run_timeline.timeline` opens the output's instance, which sets $DAGSTER_HOME; a
    `dedup run` started later from the same process must not inherit it (it would record
    its runs in the first output's instance)."""
    from benchmarks.run_timeline import timeline
    from dedup_assets.core.data.layout import prepare_dagster_home

    out = tmp_path / "out"
    prepare_dagster_home(out)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert timeline(out) == []
    assert "DAGSTER_HOME" not in os.environ
    elsewhere = tmp_path / "elsewhere"
    prepare_dagster_home(elsewhere)
    monkeypatch.setenv("DAGSTER_HOME", str(elsewhere / ".dagster"))
    assert timeline(out) == []
    assert os.environ["DAGSTER_HOME"] == str(elsewhere / ".dagster")


def test_a_runs_shape_counts_time_outside_and_between_runs():
    """bench_run_cpu's reading of a timeline: runs overlapping, a gap, steps summed."""
    from benchmarks.bench_run_cpu import shape

    runs = [
        {"start": 0.0, "end": 1.0, "steps": [{"step": "a", "start": 0.1, "end": 0.9}]},
        {"start": 0.5, "end": 2.0, "steps": [{"step": "b", "start": 0.6, "end": 1.9}]},
        {"start": 2.5, "end": 3.0, "steps": [{"step": "a", "start": 2.6, "end": 2.9}]},
    ]
    got = shape(runs, wall=4.0)
    assert got["dagster_runs"] == 3 and got["runs_span_seconds"] == 3.0
    assert got["between_runs_seconds"] == 0.5 and got["outside_runs_seconds"] == 1.0
    assert got["step_seconds"] == {"a": 1.1, "b": 1.3}
    assert shape([], wall=1.0) == {}


def test_an_output_with_a_model_is_new_and_holds_the_model(tmp_path):
    """The benchmarks' first runs start from this: an earlier output removed, the folder
    claimed as latent-dedup's, the model's bytes copied in."""
    from dedup_assets.core.data.layout import OutputLayout

    model = tmp_path / "autoencoder.pt"
    model.write_bytes(b"weights")
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)
    common.output_with_model(out, model)
    assert not (out / "stale").exists()
    assert (out / "model" / "autoencoder.pt").read_bytes() == b"weights"
    OutputLayout(out).claim()  # already latent-dedup's: claiming it again is allowed
    assert {p.name for p in out.iterdir()} >= {"model"}
