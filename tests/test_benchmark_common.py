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
    # Its training record goes along only when asked for and the model has one, whole.
    assert common.output_with_model(out, model, record=True) is False
    (tmp_path / "training.json").write_text("{}")
    assert common.output_with_model(out, model, record=True) is False  # half a record
    (tmp_path / "trained_images.parquet").write_bytes(b"ids")
    assert common.output_with_model(out, model) is False
    assert not (out / "model" / "training.json").exists()
    assert common.output_with_model(out, model, record=True) is True
    assert (out / "model" / "trained_images.parquet").read_bytes() == b"ids"
    assert (out / "model" / "training.json").read_text() == "{}"


def test_the_file_system_of_a_path_is_its_longest_mount(monkeypatch, tmp_path):
    """`filesystem_of` reads the mount table: the deepest mount above the path counts (not a
    mount whose name merely starts the same), a space is written \\040 there, and without
    a table the answer is "unknown"."""
    table = tmp_path / "mounts"
    table.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "tmpfs /dev/shm tmpfs rw 0 0\n"
        "tmpfs /data/my\\040disk tmpfs rw 0 0\n"
        "/dev/vdb /data/my xfs rw 0 0\n"
        "broken\n"
    )
    real = Path.read_text
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: real(table) if str(self) == "/proc/self/mounts" else real(self),
    )
    monkeypatch.setattr(common.os.path, "realpath", lambda p: str(p))
    assert common.filesystem_of(Path("/dev/shm/bench_targets")) == "tmpfs"
    assert common.filesystem_of(Path("/dev/shmx")) == "ext4"
    assert common.filesystem_of(Path("/data/my disk/out")) == "tmpfs"
    assert common.filesystem_of(Path("/data/my/out")) == "xfs"
    assert common.filesystem_of(Path("/data/myother")) == "ext4"
    assert common.filesystem_of(Path("/")) == "ext4"
    table.unlink()
    assert common.filesystem_of(Path("/dev/shm")) == "unknown"


def test_benchmarks_work_in_memory_where_there_is_a_tmpfs(monkeypatch):
    """`scratch_root`: /dev/shm when it is a tmpfs, else the temporary folder."""
    import tempfile

    monkeypatch.setattr(common, "filesystem_of", lambda p: "tmpfs")
    shm = Path("/dev/shm")
    expected = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    assert common.scratch_root() == expected
    monkeypatch.setattr(common, "filesystem_of", lambda p: "ext4")
    assert common.scratch_root() == Path(tempfile.gettempdir())
