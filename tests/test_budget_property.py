"""The false-removal budget as a property: at a budget b, classes of unrelated images lose
at most about b of their images, whatever the class size and the image size.

Each set is cut into classes of 2, 3, 5, 10, 30, 100 (and 1,000 where the set is big
enough) unrelated images and decided exactly as a run decides (`core.decision.class_keep`,
the reference pool of `core.decision.reference_pool`, class fits of
`core.density.class_density`), at the budgets 0.1%, 0.5%, 1% and 5%. Every removal is false. Required: over all classes together the
removed count is within the binomial 99% bound of b x images; for each class size at most
twice b x its images or, where that is below one image's worth of chance, the size's own
binomial 99% bound. Synthetic textures always run; EuroSAT at 64 px and downscaled to
32 px, and the hymenoptera photos, run when ../shared/datasets holds them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binom

from dedup_assets.core.data.image_folder import decode_image_bytes
from dedup_assets.core.decision.class_keep import decide_in_memory
from dedup_assets.core.model.autoencoder import train_autoencoder

BUDGETS = ("0.1%", "0.5%", "1%", "5%")
SPACE = "spline_copula_dct"
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SIZES = {2: 50, 3: 34, 5: 20, 10: 10, 30: 4, 100: 2, 1000: 1}  # class size: classes


def _decode(data: bytes) -> np.ndarray:
    decoded = decode_image_bytes(data)
    assert decoded.pixels is not None, decoded.error
    return decoded.pixels


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _textures(n: int, seed: int) -> np.ndarray:
    """n unrelated 64x64 scenes: smooth random fields in random colours, stripes and blobs
    at random frequencies, angles and places (no two alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) / 64.0
    out = np.empty((n, 64, 64, 3), np.uint8)
    for i in range(n):
        coarse = rng.standard_normal((rng.integers(2, 9), rng.integers(2, 9), 3))
        field = np.asarray(
            Image.fromarray(
                ((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8)
            ).resize((64, 64), Image.BICUBIC)
        ).astype(np.float32)
        angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 20)
        stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi)
        cx, cy, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.4)]
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r).astype(np.float32)
        colour = rng.uniform(0, 255, 3)
        img = (
            rng.uniform(0.3, 0.8) * field
            + rng.uniform(0, 60) * stripes[..., None]
            + rng.uniform(-80, 80) * blob[..., None] * colour / 255
            + rng.normal(0, 4, (64, 64, 3))
        )
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _cut(pixels: np.ndarray, sizes: dict[int, int]) -> dict[str, np.ndarray]:
    """Classes `s<size>_<i>` of consecutive images, as many as `sizes` asks and fit."""
    classes, at = {}, 0
    for size, count in sizes.items():
        for i in range(count):
            if at + size > len(pixels):
                return classes
            classes[f"s{size:04d}_{i:03d}"] = pixels[at : at + size]
            at += size
    return classes


def _model(pixels: np.ndarray):
    """A briefly trained autoencoder: the property must hold for any model's space."""
    sample = pixels[np.random.default_rng(0).permutation(len(pixels))[:1024]]
    return train_autoencoder(sample, epochs=1, batch_size=64, seed=0).model


def decide_unrelated(
    classes: dict[str, np.ndarray], budgets=BUDGETS, model=None, space=SPACE
) -> dict[str, dict[str, object]]:
    """Every class decided at every budget as a run does: {budget: {class: decision}}."""
    if model is None:
        model = _model(np.concatenate([classes[k] for k in sorted(classes)]))
    return decide_in_memory(classes, list(budgets), model, space=space)


def _check_budget(decided: dict, label: str) -> list[str]:
    """The removed counts against the budget: over all classes and per class size."""
    problems, table = [], []
    for key, per_class in decided.items():
        b = float(key.rstrip("%")) / 100
        by_size: dict[int, list[int]] = {}
        for name, d in per_class.items():
            size = int(name[1:5])
            n, removed = len(d.decision.kept), int((~d.decision.kept).sum())
            counts = by_size.setdefault(size, [0, 0])
            counts[0] += n
            counts[1] += removed
        n_all = sum(v[0] for v in by_size.values())
        removed_all = sum(v[1] for v in by_size.values())
        bound = binom.ppf(0.99, n_all, b)
        table.append(f"{label} {key}: {removed_all}/{n_all} " + str(sorted(by_size.items())))
        if removed_all > bound:
            problems.append(f"{label} at {key}: {removed_all} of {n_all} removed > {bound:.0f}")
        for size, (n, removed) in sorted(by_size.items()):
            allowed = max(2 * b * n, binom.ppf(0.99, n, b))
            if removed > allowed:
                problems.append(
                    f"{label} at {key}: classes of {size} lost {removed} of {n} > {allowed:.1f}"
                )
    print("\n".join(table))
    return problems


def test_unrelated_synthetic_textures_hold_every_budget():
    classes = _cut(_textures(1722, seed=3), SIZES)
    assert len(classes) == sum(SIZES.values())
    decided = decide_unrelated(classes)
    assert not _check_budget(decided, "textures")
    # Small classes borrowed the pool in the DCT space; the 1,000-image class read every
    # budget in its own space (k = floor(1001 b) >= 1), against its mirrors and the pool.
    one = decided["1%"]
    assert {(one[k].resolved.null, one[k].resolved.space) for k in one if k < "s0006"} == {
        ("pool", "dct")
    }
    for key in BUDGETS:
        big = decided[key]["s1000_000"].resolved
        assert big.space == SPACE and big.offsets is not None


def test_classes_of_alike_images_that_differ_from_each_other_hold_every_budget():
    """Each class one kind of scene (the demo's six renderers: forest, water, ...) and the
    only class of its kind, so its unrelated images are closer to each other than to the
    other classes' images, which the pooled null borrows: the class's own median shift must
    make up for it. One run per class size (six classes each)."""
    from dedup_assets.core.quality.demo_data import DEMO_CLASSES, _render

    decided: dict[str, dict[str, object]] = {b: {} for b in BUDGETS}
    for size in (5, 10, 30, 60):
        classes = {
            f"s{size:04d}_{kind}": np.stack([_render(kind, size, i) for i in range(size)])
            for kind in DEMO_CLASSES
        }
        for key, per_class in decide_unrelated(classes).items():
            decided[key] |= per_class
    assert not _check_budget(decided, "one kind per class")


def test_a_class_too_small_for_the_pool_removes_only_exact_copies():
    """Two classes of two unrelated images: 2 pool images each, far too few for 1% (the
    highest of a handful would be exceeded a third of the time): threshold 1.0, nothing
    removed but the exact copy."""
    px = _textures(4, seed=5)
    classes = {"a": px[:2], "b": np.concatenate([px[2:], px[2:3]])}
    decided = decide_unrelated(classes, ("1%",))["1%"]
    for d in decided.values():
        assert d.resolved.null == "none" and d.resolved.threshold == 1.0
    assert decided["a"].decision.kept.all()
    b = decided["b"].decision
    assert b.kept[1] and int(b.kept[[0, 2]].sum()) == 1  # the copy pair keeps one
    assert int(b.exact.sum()) == 1 and not b.exact[1]


@pytest.mark.parametrize("size", [2, 3, 5, 10])
def test_an_exact_copy_group_among_unrelated_images_keeps_one(size):
    """x.png, x.bmp and x.tif (the same pixels) among unrelated images of a small class, with
    other classes to borrow from: exactly one member stays at every budget, and every
    removed image names a kept one."""
    px = _textures(size + 300, seed=size)
    group = np.repeat(px[:1], 3, axis=0)
    classes = {"small": np.concatenate([group, px[1:size]])}
    classes |= {f"other{i}": px[size + 30 * i : size + 30 * (i + 1)] for i in range(10)}
    decided = decide_unrelated(classes)
    for key in BUDGETS:
        d = decided[key]["small"].decision
        assert int(d.kept[:3].sum()) == 1, (key, d.kept.tolist())
        assert d.kept[3:].all(), key  # the unrelated images stay
        removed = np.flatnonzero(~d.kept)
        assert d.kept[d.duplicate_of[removed]].all()


def _eurosat(px: int) -> np.ndarray:
    root = DATASETS / "eurosat"
    files = sorted(root.rglob("*.jpg"))
    rng = np.random.default_rng(0 if px == 64 else 1)
    picked = [files[i] for i in rng.permutation(len(files))[:1722]]
    out = []
    for f in picked:
        if px == 64:
            out.append(_decode(f.read_bytes()))
        else:
            small = Image.open(f).convert("RGB").resize((px, px), Image.BILINEAR)
            out.append(_decode(_png(small)))
    return np.stack(out)


@pytest.mark.skipif(
    not (DATASETS / "eurosat").is_dir(),
    reason="EuroSAT is not at ../shared/datasets/eurosat (a fresh clone has no ../shared)",
)
@pytest.mark.parametrize("px", [64, 32])
def test_unrelated_eurosat_images_hold_every_budget(px):
    """1,722 EuroSAT images drawn across its classes, at 64 px or downscaled to 32 px."""
    torch.manual_seed(0)
    decided = decide_unrelated(_cut(_eurosat(px), SIZES))
    assert not _check_budget(decided, f"EuroSAT {px} px")


@pytest.mark.skipif(
    not (DATASETS / "hymenoptera").is_dir(),
    reason="hymenoptera is not at ../shared/datasets/hymenoptera (a fresh clone has no ../shared)",
)
def test_unrelated_photos_hold_every_budget():
    """The 398 hymenoptera photos (full size, decoded to 64x64 as a run does)."""
    files = sorted((DATASETS / "hymenoptera").rglob("*.jpg"))
    rng = np.random.default_rng(0)
    pixels = np.stack([_decode(files[i].read_bytes()) for i in rng.permutation(len(files))])
    decided = decide_unrelated(_cut(pixels, {2: 29, 3: 20, 5: 12, 10: 6, 30: 2, 90: 1}))
    assert not _check_budget(decided, "photos")


@pytest.mark.parametrize("space", [SPACE, "dct"])
def test_flat_images_in_the_pool_or_the_class_do_not_break_a_budget(space):
    """A flat image has no DCT direction (a zero row gets an origin axis of its own), so the
    pool's vectors can be one column wider than a class's: both budget readings (a class of
    120 reading 5% on its own and against the pool, classes of 3 borrowing the pool) and the
    decision run, and the flat images are not removed as copies of anything else."""
    px = _textures(400, seed=9)
    flat = np.full((2, 64, 64, 3), 128, np.uint8)
    flat[1] = 30
    classes = {
        "big": px[:120],
        "small": px[120:123],
        "flat": np.concatenate([flat, px[123:124]]),
        "rest": px[124:400],
    }
    decided = decide_unrelated(classes, ("0.1%", "5%"), space=space)
    assert decided["5%"]["big"].resolved.space == space
    assert decided["5%"]["small"].resolved.null == "pool"
    assert decided["5%"]["flat"].decision.kept[:2].all()  # two different flat greys
