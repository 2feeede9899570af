"""The false-removal budget through the real command, where the issue met it: classes of 2 to
10 unrelated photos-like images and an exact-copy group x.png / x.bmp / x.tif beside an
unrelated y.png. At 1% the run must remove only the exact copies (every class is far too
small to read 1% alone, and the pool holds about 100 images: fewer than 1/b draws for the
classes of 2, threshold 1.0; a cosine from the pool for the rest), and say so in the keep
list, its JSON summary and reports/summary.md."""

import json

import numpy as np
import polars as pl
from conftest import run_dedup
from PIL import Image

FAST = ("--epochs", "1", "--device", "cpu", "--precision", "fp32")


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)


def test_small_classes_of_unrelated_images_lose_only_exact_copies(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    seed = 0
    sizes = [2, 2, 3, 3, 5, 5, 10, 10, 20, 20, 20]
    for c, size in enumerate(sizes):
        folder = source / f"class_{c:02d}"
        folder.mkdir(parents=True)
        for i in range(size):
            _picture(seed := seed + 1).save(folder / f"img_{i:02d}.png")
    group = source / "copies"
    group.mkdir()
    x = _picture(999)
    x.save(group / "x.png")
    x.save(group / "x.bmp")
    x.save(group / "x.tif")
    _picture(998).save(group / "y.png")
    done = run_dedup(
        "run", "--source", str(source), "--output", str(out), "--thresholds", "1%", *FAST
    )
    assert done.returncode == 0, done.stdout + done.stderr
    keep = pl.read_parquet(out / "keep_lists" / "1%.parquet")
    removed = keep.filter(~pl.col("kept"))
    # The exact-copy group keeps exactly one of x.*, y stays; nothing else goes.
    copies = keep.filter(pl.col("class") == "copies")
    xs = copies.filter(pl.col("path").str.contains("/x."))
    assert int(xs["kept"].sum()) == 1
    assert copies.filter(pl.col("path").str.ends_with("y.png"))["kept"].all()
    assert removed.height == 2 and set(removed["match"]) == {"exact"}
    assert set(removed["duplicate_of"]) <= set(keep.filter(pl.col("kept"))["image_id"])
    # Every class says where its 1% was read: the pool, or nowhere for the classes whose pool
    # draws cannot show 1% (threshold 1.0).
    per = keep.group_by("class").agg(pl.col("calibrated_on").first(), pl.col("cosine").max())
    assert set(per["calibrated_on"]) <= {"pool", "none"}
    assert (per.filter(pl.col("calibrated_on") == "none")["cosine"] == 1.0).all()
    # The allowed false removals beside the removals, per class and in the summary.
    summary = json.loads((out / "keep_lists" / "1%.json").read_text())
    rows = {r["class"]: r for r in summary["per_class"]}
    assert rows["class_08"]["allowed_false"] == 20 * 0.01
    assert rows["copies"]["exact_copies"] == 2 and rows["copies"]["near_duplicates"] == 0
    assert not any(r["beyond_chance"] for r in rows.values())
    text = (out / "reports" / "summary.md").read_text()
    assert "## Removals against the false-removal budget" in text
    assert "| 1% | 104 | 2 | 0 | 1.0 | 0 |" in text
