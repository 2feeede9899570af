"""A rerun of `dedup run` with nothing new answers from the last successful run's record
(`core.data.run_fingerprint`) without importing Dagster, torch or polars and without
touching the output; any change a run could compute from (a new, removed or touched image,
an option, the overrides, a missing output) takes the full path, a failed or interrupted
run leaves no record, and `--force` always takes the full path. Through the real `dedup`
command on a tiny dataset, as one sequence of runs (each starts from the record the one
before left: one first run and training in all)."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import DEDUP, run_dedup

from dedup_assets.core.data.run_fingerprint import fingerprint_path
from dedup_assets.core.quality.demo_data import generate_demo_dataset

FAST = ("--epochs", "1", "--device", "cpu", "--precision", "fp32", "--executor", "in_process")
QUICK = "nothing changed: every output is up to date: "
# What the runner says once it compared the source and the settings with the outputs.
COMPARED = re.compile(r"^(source: |nothing changed: the source and the settings)", re.M)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    generate_demo_dataset(root, seed=3, per_class=6, duplicate_fraction=0.3)
    for extra in ("desert", "road", "urban", "water"):  # two classes: fewest runs
        shutil.rmtree(root / extra)
    return root


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under root, the instance included."""
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            found[os.path.relpath(os.path.join(dirpath, name), root)] = (
                st.st_size,
                st.st_mtime_ns,
            )
    return found


def _record(out: Path) -> dict | None:
    path = fingerprint_path(out)
    return json.loads(path.read_text()) if path.is_file() else None


def _images(stdout: str) -> int:
    return int(re.search(r"^catalog: (\d+) images", stdout, re.M).group(1))


CODE = "latent-dedup's code"
"""A part of the record that people editing this working tree change during a test; a run
that finds only it changed takes the full path and records the new code."""


def _reasons(stdout: str) -> set[str] | None:
    """What the quick check said had changed, or None when it compared with no record."""
    found = re.search(r"^quick check: (.*); checking every stage$", stdout, re.M)
    if found is None:
        return None
    said, changed = found.group(1), "changed since the last run: "
    return set(said.removeprefix(changed).split(", ")) if said.startswith(changed) else {said}


def _full(done: subprocess.CompletedProcess, why: str | None) -> None:
    """The run took the full path, succeeded and left a record; with `why`, the quick check
    compared it with the last record and named that change (see CODE)."""
    assert done.returncode == 0, done.stdout + done.stderr
    assert QUICK not in done.stdout and COMPARED.search(done.stdout), done.stdout
    reasons = _reasons(done.stdout)
    if why is None:
        assert reasons is None, done.stdout
    else:
        # A concurrent code edit is found first: what else changed is then not looked at.
        assert reasons is not None and reasons <= {why, CODE}, done.stdout
        assert why in reasons or reasons == {CODE}, done.stdout
    assert _record(_output_of(done))["exit_status"] == 0


def _output_of(done: subprocess.CompletedProcess) -> Path:
    return Path(done.args[done.args.index("--output") + 1])


def _quick(run: list[str], monkeypatch) -> tuple[subprocess.CompletedProcess, dict]:
    """A rerun with nothing new, with each import it makes on stderr; asserts it wrote or
    touched no file of the output (its instance included). Returns it and the record it
    answered from. Once more when it found only the code changed (see CODE)."""
    out = Path(run[run.index("--output") + 1])
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    for _ in range(2):
        record, before = _record(out), _tree(out)
        done = run_dedup(*run)
        if _reasons(done.stdout) != {CODE}:
            break
    monkeypatch.delenv("PYTHONPROFILEIMPORTTIME")
    assert done.returncode == record["exit_status"] == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith(QUICK) and "so nothing was recomputed" in lines[1], done.stdout
    assert lines[2:] == "\n".join(record["report"]).splitlines()
    imported = {m.split("|")[-1].strip().split(".")[0] for m in done.stderr.splitlines()}
    assert "dedup_assets" in imported and not imported & {"dagster", "torch", "polars"}
    assert _tree(out) == before
    return done, record


def test_nothing_new_answers_from_the_record_and_each_change_takes_the_full_path(
    source, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    run = ["run", "--source", str(source), "--output", str(out), "--thresholds", "0.95", *FAST]
    first = run_dedup(*run)
    _full(first, None)
    images = _images(first.stdout)

    # Nothing new: the record's last screen and exit status, no Dagster, torch or polars
    # imported, nothing written.
    quick, _ = _quick(run, monkeypatch)
    lines = quick.stdout.splitlines()
    assert lines[0] == f"latent-dedup: {source} -> {out}"
    assert "what the outputs hold (nothing was computed):" in lines
    assert lines[-1].startswith("done: ") and _images(quick.stdout) == images

    # A new image: processed (one more in the catalog).
    field = source / "farmland"
    new = field / "new.png"
    new.write_bytes(sorted(field.glob("*.png"))[0].read_bytes())
    added = run_dedup(*run)
    _full(added, "the source's files")
    assert _images(added.stdout) == images + 1
    _quick(run, monkeypatch)  # recorded again

    # The same image touched (same bytes, a later modification time).
    os.utime(new, ns=(time.time_ns(), time.time_ns() + 10**9))
    _full(run_dedup(*run), "the source's files")

    # Another option: a second threshold is computed.
    run[run.index("0.95")] = "0.95,0.97"
    _full(run_dedup(*run), "the options")
    assert (out / "keep_lists" / "0.97.parquet").is_file()

    # Corrections appear in the output folder (overrides.csv): honoured.
    keep = pl.read_parquet(out / "keep_lists" / "0.95.parquet")
    kept = keep.filter(pl.col("kept") & (pl.col("class") == "forest"))["path"][0]
    (out / "overrides.csv").write_text(f"path,decision,other\n{kept},remove,\n")
    corrected = run_dedup(*run)
    _full(corrected, "the output's overrides.csv")
    assert "1 by your overrides" in corrected.stdout, corrected.stdout

    # An output deleted: made again.
    (out / "keep_lists" / "0.97.parquet").unlink()
    remade = run_dedup(*run)
    _full(remade, "an output was added, removed or rewritten since the last run")
    assert "source: nothing changed" in remade.stdout
    assert (out / "keep_lists" / "0.97.parquet").is_file()

    # --force: the full path with nothing changed (no comparison made), recorded again.
    forced = run_dedup(*run, "--force")
    _full(forced, None)
    assert "nothing changed: every output is up to date\n" in forced.stdout
    _quick(run, monkeypatch)

    # The image removed: the quick check says so; the run, stopped by Ctrl-C once its
    # first stage started, leaves no record...
    new.unlink()
    assert _record(out) is not None
    proc = subprocess.Popen(
        [str(DEDUP), *run],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
    )
    said = []
    for line in proc.stdout:
        said.append(line)
        if line.startswith("[catalog] starting"):
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=300)
    assert proc.returncode == 130, "".join(said)
    assert _reasons("".join(said)) in ({"the source's files"}, {"the source's files", CODE})
    assert _record(out) is None

    # ... so the next run compares with none: the full path, the image gone from the
    # catalog, a record again.
    resumed = run_dedup(*run)
    _full(resumed, None)
    assert _images(resumed.stdout) == images

    # A run that fails after the catalog (no such CUDA device, wherever this runs) leaves
    # no record either.
    new.write_bytes(sorted(field.glob("*.png"))[1].read_bytes())
    device = run.index("--device") + 1
    failed = run_dedup(*run[:device], "cuda:99", *run[device + 1 :])
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "SKIPPED every later stage: training failed" in failed.stdout
    assert _record(out) is None


def test_a_record_of_another_versions_inputs_says_so_not_that_a_file_changed(tmp_path):
    from dedup_assets.core.data.run_fingerprint import LastRun, RunInputs

    old = RunInputs({"options": "o", "code": "c1"})
    new = RunInputs({"options": "o", "code": "c2", "file source leaks.csv": "absent"})
    record = LastRun(old.digest, dict(old.parts), "", "2026-12-03T16:00:00+00:00", 0)
    why = record.differs(new, tmp_path)
    assert why == (
        "changed since the last run: latent-dedup's code, what a run records "
        "(an earlier version's record)"
    )
    assert "leaks.csv" not in why
