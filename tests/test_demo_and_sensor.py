"""The demo is safe to play with, and `--verify` sees what stat fields cannot (issue 21).

One small `dedup demo` run (the demo source made beforehand, three classes of 8 originals,
so the run is short), then: the demo source is never rewritten; the new-images sensor, evaluated on the
output's own instance and code location, requests only the class a user added an image to;
a file rewritten in place with its size and modification time kept is invisible to the
default check and to the sensor, and `--verify` (the flag, and DEDUP_VERIFY for the sensor)
reprocesses exactly its class, whose keep list then reflects the new bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import run_dedup
from PIL import Image

from dedup_assets.config import PipelineConfig
from dedup_assets.core.data.layout import OutputLayout, prepare_dagster_home
from dedup_assets.core.quality.demo_data import (
    demo_state,
    ensure_demo_dataset,
    generate_demo_dataset,
)
from dedup_assets.definitions import build_definitions
from resources import ImageSource

T = "0.95"
FAST = ("--epochs", "1", "--thresholds", T, "--components", "8")
MACHINE = ("--device", "cpu", "--precision", "fp32")


def _stats(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under root: (size, modification time, inode); rewriting changes them."""
    return {
        p.relative_to(root).as_posix(): (st.st_size, st.st_mtime_ns, st.st_ino)
        for p in sorted(root.rglob("*"))
        if p.is_file() and (st := p.stat())
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`dedup demo` into an output whose demo source was made small beforehand, with two
    same-size BMP images of distinct scenes added to forest (BMP: a rewrite keeps the size)."""
    base = tmp_path_factory.mktemp("demo_sensor")
    out = base / "out"
    layout = OutputLayout(out)
    layout.claim()
    source = layout.demo_dataset
    generate_demo_dataset(source, seed=3, per_class=8, duplicate_fraction=0.25)
    for gone in ("desert", "road", "urban"):  # the user's to change: three classes run faster
        shutil.rmtree(source / gone)
    other = generate_demo_dataset(base / "other", seed=99, per_class=2, duplicate_fraction=0.0)
    for name, original in (("extra_a.bmp", "forest_000.png"), ("extra_b.bmp", "forest_001.png")):
        with Image.open(other.root / "forest" / original) as img:
            img.convert("RGB").save(source / "forest" / name)
    done = run_dedup("demo", "--output", str(out), *FAST, *MACHINE)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"out": out, "source": source, "layout": layout, "stdout": done.stdout}


def _sensor(out: Path, monkeypatch, *, verify: bool = False, cursor: str | None = None):
    """One evaluation of new_images_sensor as the code location of `dedup ui --output out`
    configures it (DEDUP_OUTPUT, DEDUP_VERIFY), on that folder's instance."""
    monkeypatch.setenv("DAGSTER_HOME", str(prepare_dagster_home(out)))
    env = {"DEDUP_OUTPUT": str(out), **({"DEDUP_VERIFY": "1"} if verify else {})}
    config = PipelineConfig.from_environment(env)
    defs = build_definitions(config)
    sensor = defs.get_repository_def().get_sensor_def("new_images_sensor")
    with (
        dg.DagsterInstance.get() as instance,
        dg.build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources=config.resources()
        ) as context,
    ):
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(skip_reason=result)
    return result


def test_the_demo_names_its_source(demo):
    source = demo["source"]
    assert f"demo source: {source} (" in demo["stdout"]
    assert "add images to a class folder there" in demo["stdout"]
    saved = json.loads(demo["layout"].pipeline_file.read_text())
    assert saved["source"] == "" and saved["demo_source"] == str(source)
    # Read back as the UI reads it: the path is derived, not a setting.
    assert PipelineConfig.from_environment({"DEDUP_OUTPUT": str(demo["out"])}).source == ""


def test_the_demo_source_once_made_is_never_rewritten(tmp_path):
    dest = tmp_path / "demo_dataset"
    made = generate_demo_dataset(dest, per_class=3)
    assert made.regenerated and demo_state(dest) == "as generated"
    shutil.copy(dest / "water" / "water_000.png", dest / "water" / "mine.png")
    (dest / "road" / "road_001.png").unlink()  # damaged too: still used as it is
    before = _stats(dest)
    again = generate_demo_dataset(dest, per_class=3)
    assert not again.regenerated and again.digest == made.digest
    assert ensure_demo_dataset(dest) == dest.resolve()
    assert ImageSource(demo_dir=str(dest)).resolve_root() == dest.resolve()
    with pytest.raises(FileExistsError, match="never rewritten"):
        generate_demo_dataset(dest, per_class=4)
    assert _stats(dest) == before and (dest / "water" / "mine.png").is_file()
    assert demo_state(dest).startswith("differs from the generated set")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_dataset"]  # no temp leftovers


def test_the_sensor_requests_only_the_class_a_user_added_to(demo, monkeypatch):
    out, source = demo["out"], demo["source"]
    first = _sensor(out, monkeypatch)
    assert not first.run_requests and "nothing changed" in first.skip_reason.skip_message
    before = _stats(source)
    added = source / "water" / "added_by_user.png"
    with Image.open(source / "water" / "water_002.png") as img:
        img.transpose(Image.Transpose.ROTATE_90).save(added)
    try:
        tick = _sensor(out, monkeypatch)
        assert [(r.job_name, r.partition_key) for r in tick.run_requests] == [
            ("update_class_job", "water")
        ]
        assert not tick.dynamic_partitions_requests
        assert added.is_file(), "the sensor resolved the demo source and deleted a user's file"
        now = _stats(source)
        assert now.pop("water/added_by_user.png") and now == before, "nothing else may change"
        again = _sensor(out, monkeypatch, cursor=tick.cursor)
        assert not again.run_requests and "already requested" in again.skip_reason.skip_message
    finally:
        added.unlink()


def test_verify_notices_a_rewrite_that_keeps_size_and_mtime(demo, monkeypatch):
    out, source, layout = demo["out"], demo["source"], demo["layout"]
    victim, model = source / "forest" / "extra_a.bmp", source / "forest" / "extra_b.bmp"
    st = victim.stat()
    assert model.stat().st_size == st.st_size
    victim.write_bytes(model.read_bytes())  # the same picture as extra_b, in place
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns

    assert "nothing changed" in _sensor(out, monkeypatch).skip_reason.skip_message
    tick = _sensor(out, monkeypatch, verify=True)
    assert [(r.job_name, r.partition_key) for r in tick.run_requests] == [
        ("update_class_job", "forest")
    ]

    plain = run_dedup("demo", "--output", str(out), *FAST, *MACHINE)
    assert plain.returncode == 0 and "nothing changed" in plain.stdout, plain.stdout
    verified = run_dedup("demo", "--output", str(out), *FAST, *MACHINE, "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "source: changed: forest\n" in verified.stdout, verified.stdout
    rows = pl.read_parquet(layout.keep_list(T)).filter(
        pl.col("path").is_in(["forest/extra_a.bmp", "forest/extra_b.bmp"])
    )
    kept, removed = rows.filter(pl.col("kept")), rows.filter(~pl.col("kept"))
    assert kept.height == 1 and removed.height == 1, rows
    assert removed["match"][0] == "exact" and removed["duplicate_of"][0] == kept["image_id"][0]

    # Reprocessed from the new bytes: verifying again finds nothing (no endless requests).
    settled = _sensor(out, monkeypatch, verify=True)
    assert "nothing changed" in settled.skip_reason.skip_message


def test_a_relative_output_folder_ends_with_the_review_page_as_a_file_url(tmp_path):
    """`dedup demo` in a fresh clone writes to ./dedup_output, a relative path: the last
    screen's link to the review page must be an absolute file:// URL, not a crash."""
    done = run_dedup("demo", "--output", "out", *FAST, *MACHINE, cwd=tmp_path)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    page = (tmp_path / "out" / "review" / "index.html").resolve()
    assert f"next: review the removals on {page.as_uri()}" in done.stdout, done.stdout
