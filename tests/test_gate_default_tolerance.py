"""The kurtosis gate at its default tolerance (0.1), end to end through `dedup run`, on data
where its verdict is not chance.

The gate reads, per leading component, the median over classes of kurtosis after removal
minus kurtosis before (the Theil-Sen line at the median), on each class's principal axes
fitted to all its images, and blocks when that exceeds both the tolerance and what removing
as many images per class at random reaches (98.3% quantile). Two constructions decide it by
arithmetic, whatever the trained network (only exact copies are planted, and exact copies
are removed at every threshold):

- every image twice: removing one of each pair leaves the same empirical distribution, so
  every moment, and kurtosis, is unchanged: the line sits on the median (PASS or WARN),
  while random removal of half the images moves kurtosis both ways. Never ERROR.
- a bulk of distinct images plus many copies of one far-away image: before removal the
  leading component is a two-cluster split (kurtosis near -2), after it a single outlier
  among 25 images (near +20); random removal keeps both clusters. Always ERROR.

`tests/test_pipeline.py` runs its six classes of 20 images with a wide tolerance because
there the verdict is chance; the wiring of a forced verdict is tested there too.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import run_dedup
from PIL import Image

THRESHOLD = "0.97"
CLASSES = ("alpha", "beta", "gamma")
# Small, fast and deterministic; the gate's tolerance is left at its default.
FAST = ("--epochs", "1", "--batch-size", "32", "--device", "cpu", "--precision", "fp32")


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A distinct smooth colour field with fine grain: unrelated to every other one."""
    cells = int(rng.integers(3, 8))
    coarse = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((64, 64), Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _outlier(k: int) -> np.ndarray:
    """A saturated checkerboard, nothing like the textures (one colour pair per class)."""
    yy, xx = np.mgrid[0:64, 0:64]
    board = ((yy // (4 + 2 * k)) + (xx // (4 + 2 * k))) % 2 == 0
    colours = [
        ((255, 0, 255), (0, 255, 0)),
        ((255, 255, 0), (0, 0, 255)),
        ((0, 255, 255), (255, 0, 0)),
    ]
    a, b = colours[k % len(colours)]
    return np.where(board[..., None], np.array(a), np.array(b)).astype(np.uint8)


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)  # PNG: a copy decodes to the same pixels


def _every_image_twice(root: Path, distinct: int = 20) -> None:
    rng = np.random.default_rng(11)
    for name in CLASSES:
        for i in range(distinct):
            img = _texture(rng)
            _save(img, root / name / f"{name}_{i:03d}.png")
            _save(img, root / name / f"{name}_{i:03d}_copy.png")


def _copies_of_an_outlier(root: Path, distinct: int = 24, copies: int = 18) -> None:
    rng = np.random.default_rng(12)
    for k, name in enumerate(CLASSES):
        for i in range(distinct):
            _save(_texture(rng), root / name / f"{name}_{i:03d}.png")
        far = _outlier(k)
        for i in range(copies):
            _save(far, root / name / f"{name}_far_{i:03d}.png")


def _dedup(base: Path, make) -> tuple:
    source, out = base / "source", base / "out"
    make(source)
    done = run_dedup(
        "run", "--source", str(source), "--output", str(out), "--thresholds", THRESHOLD, *FAST
    )
    report = out / "reports" / THRESHOLD / "summary.json"
    assert report.exists(), done.stdout + done.stderr
    summary = json.loads(report.read_text())
    keep = pl.read_parquet(out / "keep_lists" / f"{THRESHOLD}.parquet")
    return done, summary, keep, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both constructions through `dedup run` at once (one test file runs on one worker)."""
    makes = {"twice": _every_image_twice, "outlier": _copies_of_an_outlier}
    with ThreadPoolExecutor(len(makes)) as pool:
        futures = {
            k: pool.submit(_dedup, tmp_path_factory.mktemp(k), make) for k, make in makes.items()
        }
        return {k: f.result() for k, f in futures.items()}


def _removed_only_exact_copies(keep: pl.DataFrame) -> None:
    removed = keep.filter(~pl.col("kept"))
    assert removed.height > 0
    assert removed["match"].unique().to_list() == ["exact"], removed.select("path", "match")


def test_removing_one_of_every_pair_never_blocks(runs):
    done, summary, keep, out = runs["twice"]
    gate = summary["gate"]
    # The premise: one of each pair went, and nothing else.
    _removed_only_exact_copies(keep)
    assert keep.filter(pl.col("kept")).height == 20 * len(CLASSES)
    assert summary["classes_measured"] == len(CLASSES)
    assert gate["tolerance"] == 0.1  # the default
    assert gate["severity"] in ("pass", "warn"), gate
    for r in summary["regressions"]:
        assert abs(r["excess_at_median"]) < 1e-6, r
    assert done.returncode == 0, done.stdout + done.stderr
    # The last screen says the verdict in words that do not read as a failure.
    lines = done.stdout.splitlines()
    (said,) = [x for x in lines if x.startswith("  kurtosis: ")]
    assert "held back" not in said and "fail" not in said.replace("not a failure", ""), said
    assert lines[-1].startswith("done: every stage ran"), lines[-1]
    clean = out / "clean" / THRESHOLD
    assert sorted(p.name for p in clean.iterdir() if p.is_dir()) == list(CLASSES)
    assert sum(1 for _ in clean.rglob("*.png")) == 20 * len(CLASSES)


def test_removing_copies_of_an_outlier_blocks_the_clean_copy(runs):
    done, summary, keep, out = runs["outlier"]
    gate = summary["gate"]
    far = keep.filter(pl.col("path").str.contains("_far_"))
    assert far.filter(pl.col("kept")).height == len(CLASSES)  # one of each outlier's copies
    assert far.filter(~pl.col("kept"))["match"].unique().to_list() == ["exact"]
    assert summary["classes_measured"] == len(CLASSES)
    assert gate["tolerance"] == 0.1
    assert gate["severity"] == "error", gate
    pc1 = summary["regressions"][0]["excess_at_median"]
    assert pc1 > 5 * max(gate["tolerance"], gate["random_removal_excess"][0]), summary
    assert done.returncode == 3, done.stdout + done.stderr  # a blocking gate, not an error
    assert not (out / "clean" / THRESHOLD).exists()
    lines = done.stdout.splitlines()
    (said,) = [x for x in lines if x.startswith("  kurtosis: ")]
    assert said.startswith("  kurtosis: raised beyond chance, the clean copy is held back"), said
    assert "  clean copy: held back by the gate above; none written" in lines
    assert lines[-1].startswith("exit 3: a blocking gate held back the clean copy of T=")


@pytest.mark.parametrize("make", [_every_image_twice, _copies_of_an_outlier])
def test_constructions_are_exact_copies_only(tmp_path, make):
    """The premise both verdicts rest on: the sets hold no planted near-duplicate, only
    pixel-identical copies, and (outlier set) the outliers are identical to each other."""
    make(tmp_path)
    for name in CLASSES:
        pixels = {}
        for p in sorted((tmp_path / name).glob("*.png")):
            pixels.setdefault(np.asarray(Image.open(p)).tobytes(), []).append(p.name)
        groups = sorted(len(v) for v in pixels.values())
        if make is _every_image_twice:
            assert groups == [2] * 20
        else:
            assert groups == [1] * 24 + [18]


@pytest.mark.parametrize("which", ["outlier", "twice"])
def test_a_later_call_with_nothing_to_do_is_ok_only_when_no_gate_holds_a_copy_back(runs, which):
    """`deduplicate` on an output whose gate held the clean copy back, with nothing new: not
    ok, the threshold named in `held_back` and the repr, as `dedup run` exits 3 again (it
    said ok, with no word of the missing copy); where the gate passed, ok."""
    from dedup_assets import deduplicate

    _, _, _, out = runs[which]
    again = deduplicate(
        out.parent / "source",
        output=out,
        thresholds=[THRESHOLD],
        epochs=1,
        batch_size=32,
        device="cpu",
        precision="fp32",
    )
    assert again.nothing_changed, repr(again)
    if which == "outlier":
        assert not again.ok and again.held_back == (THRESHOLD,)
        assert THRESHOLD not in again.clean_copies
        assert f"HELD BACK clean/{THRESHOLD}: a blocking gate failed" in repr(again)
        assert repr(again).startswith(f"latent-dedup {out.parent / 'source'} -> {out}: NOT ok")
        done = run_dedup(
            "run", "--source", str(out.parent / "source"), "--output", str(out),
            "--thresholds", THRESHOLD, *FAST,
        )  # fmt: skip
        assert done.returncode == 3, done.stdout + done.stderr
    else:
        assert again.ok and again.held_back == () and THRESHOLD in again.clean_copies
