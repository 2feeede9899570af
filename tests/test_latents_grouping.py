"""Small classes encoded together (`assets.latents._ClassEncoder`): a class with fewer than
SMALL_BATCH images to encode takes the next such classes of the run into one batch, up to
GROUP_IMAGES images; each class gets exactly its own images' latents, and a later class
that cannot be planned is left to fail on its own turn."""

import numpy as np
import polars as pl
import pytest

from dedup_assets.assets.latents import GROUP_IMAGES, _ClassEncoder, _Plan
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.model.autoencoder import LATENT_DIM, SMALL_BATCH


def _encoder(
    tmp_path, sizes: dict[str, int], broken: set[str] = frozenset(), done=(), no_pixels=()
):
    """An encoder over fake classes: class k's image i has latent (k's number, i, 0...)."""
    layout = OutputLayout(tmp_path)
    layout.model.parent.mkdir(parents=True, exist_ok=True)
    layout.model.write_bytes(b"model")
    enc = _ClassEncoder(layout, "cpu", None, False, keys=list(sizes))
    batches: list[int] = []
    numbers = {k: float(n) for n, k in enumerate(sizes)}

    def plan(key: str) -> _Plan:
        if key in broken:
            raise FileNotFoundError(f"pixel store of class {key}")
        n = sizes[key]
        images = pl.DataFrame({"image_id": [f"{key}-{i}" for i in range(n)], "row": range(n)})
        reused = np.full(n, key in done)
        return _Plan(
            {}, images, np.zeros((n, LATENT_DIM), np.float32), reused, np.flatnonzero(~reused)
        )

    def pixels(key, p, part=None):
        if key in no_pixels:
            raise FileNotFoundError(f"pixel store of class {key}")
        rows = p.todo if part is None else p.todo[part]
        out = np.zeros((len(rows), 2), np.float32)
        out[:, 0], out[:, 1] = numbers[key], rows
        return out

    def encode(px):
        batches.append(len(px))
        z = np.zeros((len(px), LATENT_DIM), np.float32)
        z[:, :2] = px
        return z

    enc.plan, enc._pixels, enc._encode = plan, pixels, encode  # type: ignore[method-assign]
    return enc, batches, numbers


def _run(enc, keys):
    got = {}
    for key in keys:
        try:
            p = enc.plan(key)
        except FileNotFoundError:
            got[key] = "failed"
            continue
        ahead = enc._ahead.pop(key, None)
        if ahead is not None:  # planned and encoded with an earlier class, as `encode` takes it
            got[key] = ahead.latents
            continue
        try:
            if 0 < len(p.todo) < SMALL_BATCH:
                enc._with_next(key, p)
            elif len(p.todo):
                p.latents[p.todo] = enc._encode(enc._pixels(key, p))
        except FileNotFoundError:
            got[key] = "failed"
            continue
        got[key] = p.latents
    return got


def _own(latents, number, n):
    return np.array_equal(latents[:, 0], np.full(n, number)) and np.array_equal(
        latents[:, 1], np.arange(n)
    )


@pytest.mark.parametrize("count", [1, 2, 3, 40])
def test_small_classes_share_batches_and_keep_their_own_latents(tmp_path, count):
    sizes = {f"c{i}": 20 for i in range(count)}
    enc, batches, numbers = _encoder(tmp_path, sizes)
    got = _run(enc, sizes)
    assert all(_own(got[k], numbers[k], 20) for k in sizes)
    per_batch = GROUP_IMAGES // 20  # 51 classes of 20 fit in one batch of 1,024
    assert batches == [20 * min(per_batch, count - s) for s in range(0, count, per_batch)]
    assert enc._ahead == {}


def test_a_big_class_a_done_class_and_a_broken_class_in_the_run(tmp_path):
    sizes = {"a": 10, "done": 10, "b": 5, "big": SMALL_BATCH, "c": 3, "broken": 4, "d": 7}
    sizes |= {"unread": 2, "e": 4}
    enc, batches, numbers = _encoder(
        tmp_path, sizes, broken={"broken"}, done={"done"}, no_pixels={"unread"}
    )
    got = _run(enc, sizes)
    # a and b together (done has nothing to encode), big alone, c alone (broken stops the
    # group and fails on its own turn), d alone (unread's pixels stop it; unread fails on
    # its own turn), e alone.
    assert batches == [15, SMALL_BATCH, 3, 7, 4]
    assert got["broken"] == got["unread"] == "failed"
    for k in ("a", "b", "big", "c", "d", "e"):
        assert _own(got[k], numbers[k], sizes[k]), k
    assert not got["done"].any()  # its latents are the reused ones (zero in this fake)


def test_the_real_encoder_gives_a_class_the_same_bits_alone_or_grouped():
    torch = pytest.importorskip("torch")
    from dedup_assets.core.model.autoencoder import ConvAutoencoder, encode_images

    torch.manual_seed(0)
    model = ConvAutoencoder().eval()
    pixels = np.random.default_rng(0).integers(0, 256, (300, 64, 64, 3), dtype=np.uint8)
    grouped = encode_images(model, pixels)
    # A class of one image too: a batch of one is encoded beside a copy of itself (oneDNN
    # convolves a lone image another way, other last bits in fp32); 257 leaves one over.
    for start, stop in ((0, 20), (20, 21), (100, 163), (0, 257), (299, 300)):
        assert np.array_equal(encode_images(model, pixels[start:stop]), grouped[start:stop])
    assert np.array_equal(encode_images(model, pixels, batch_size=1), grouped)


def test_a_run_of_small_classes_encodes_their_mirrors_together(tmp_path, monkeypatch):
    """A budget run of small classes: their mirrors stored before the classes are decided,
    in one batch, each class's file the bits of its mirrors encoded alone; a class whose
    pixels cannot be read is left to its own turn, a stored one is not encoded again."""
    import dagster as dg
    from PIL import Image

    from dedup_assets.assets import class_keep_lists as keep_asset
    from dedup_assets.config import PipelineConfig, current_inputs
    from dedup_assets.core.data.artifacts import read_latent_ids
    from dedup_assets.core.decision.calibration import (
        _read_mirrors,
        encode_mirrors,
        latents_rows_pixels,
        store_small_mirrors,
    )
    from dedup_assets.core.model.autoencoder import encode_images, load_state
    from dedup_assets.runner import run_pipeline

    rng = np.random.default_rng(5)
    source = tmp_path / "source"
    sizes = {f"c{i:02d}": 3 + i % 4 for i in range(12)} | {"big": SMALL_BATCH + 6}
    for name, n in sizes.items():
        (source / name).mkdir(parents=True)
        for j in range(n):
            tile = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(tile).resize((32, 32)).save(source / name / f"{j}.png")
    calls = []
    real = keep_asset.store_small_mirrors

    def spy(layout, classes, encode, **kw):
        calls.append(sorted(k for k, *_ in classes))
        return real(layout, classes, encode, **kw)

    monkeypatch.setattr(keep_asset, "store_small_mirrors", spy)
    config = PipelineConfig.build(
        source=str(source),
        output=str(tmp_path / "out"),
        thresholds=["0.95", "1%"],
        device="cpu",
        precision="fp32",
        method={"epochs": 1, "training_images": 256, "n_components": 4},
    )
    outcome = run_pipeline(config, dg.DagsterInstance.ephemeral(), log=lambda _: None)
    assert outcome.failures == [] and outcome.skipped == [], outcome.failures
    assert calls == [sorted(k for k in sizes if k != "big")]  # the big class on its own turn
    layout = OutputLayout(tmp_path / "out")
    model = load_state(layout.model)
    keys = [k for k in sizes if k != "big"]
    for key in [*keys, "big"]:
        _, rows, mirrors = _read_mirrors(layout.mirror_latents(key))
        alone = encode_mirrors(model, latents_rows_pixels(layout, key, rows))
        assert np.array_equal(mirrors, alone), key
    # Stored ones are not encoded again; a missing class is skipped; the rest in one call.
    before = {k: _read_mirrors(layout.mirror_latents(k))[2] for k in keys[:2]}
    for k in keys[:2]:
        layout.mirror_latents(k).unlink()
    batches = []

    def encode(pixels):
        batches.append(len(pixels))
        return encode_images(model, pixels)

    inputs = current_inputs(config)
    classes = [("gone", {"x": 1}, 3)] + [
        (k, inputs.latents(k), read_latent_ids(layout.latents(k)).height) for k in keys
    ]
    assert store_small_mirrors(layout, classes, encode) == 2
    assert batches == [sizes[keys[0]] + sizes[keys[1]]]
    for k in keys[:2]:
        assert np.array_equal(_read_mirrors(layout.mirror_latents(k))[2], before[k])
    # The asset's pass before deciding: a class whose latents are gone is left to its own
    # turn (not failing the others), and a model that cannot be read leaves it to them all.
    from types import SimpleNamespace

    from dedup_assets.assets.class_keep_lists import _small_mirrors_together

    compute = SimpleNamespace(torch_device=lambda: "cpu", amp_dtype=lambda: None)
    layout.latents(keys[2]).unlink()
    layout.mirror_latents(keys[3]).unlink()
    untouched = layout.mirror_latents(keys[2]).stat().st_mtime_ns
    shared = {"model": model, "pool": None}
    assert _small_mirrors_together(layout, keys, inputs, compute, lambda: shared) == 1
    assert layout.mirror_latents(keys[3]).exists()
    assert layout.mirror_latents(keys[2]).stat().st_mtime_ns == untouched

    def unreadable():
        raise OSError("the model cannot be read")

    layout.mirror_latents(keys[3]).unlink()
    assert _small_mirrors_together(layout, keys, inputs, compute, unreadable) == 0


@pytest.mark.parametrize("order", ["catalog", "shuffled"])
def test_mirror_pixels_are_those_of_the_latents_rows_in_either_order(tmp_path, order):
    """`latents_rows_pixels`: the pixels of the latents table's rows `at`, whether the table
    is in the catalog's order (as written: no join) or not (an older file: joined by id)."""
    import polars as pl
    from conftest import catalog_frame

    from dedup_assets.core.data.artifacts import STORED_READS, write_latents
    from dedup_assets.core.decision.calibration import latents_rows_pixels

    STORED_READS.clear()
    layout = OutputLayout(tmp_path / "out")
    key = "k"
    status = ["ok", "ok", "quarantined", "ok", "ok", "ok", "ok"]
    store_row = [0, 1, None, 5, 2, 3, 4]  # pixel-store rows, not in file order
    catalog = catalog_frame(key, status, store_row, image_id="i{i}", width=64)
    layout.class_images(key).parent.mkdir(parents=True, exist_ok=True)
    catalog.write_parquet(layout.class_images(key))
    pixels = np.stack([np.full((64, 64, 3), 10 * r, np.uint8) for r in range(6)])
    np.save(layout.class_pixels(key), pixels)
    decoded = catalog.filter(pl.col("status") == "ok").sort("row")
    ids = decoded["image_id"].to_list()
    if order == "shuffled":
        ids = ids[::-1]
    layout.latents(key).parent.mkdir(parents=True, exist_ok=True)
    write_latents(layout.latents(key), ids, ids, np.zeros((len(ids), 4), np.float32), {"x": 1})
    STORED_READS.clear()  # as another process reads them
    at = np.array([0, 2, 5])
    got = latents_rows_pixels(layout, key, at)
    rows_of = dict(zip(decoded["image_id"].to_list(), decoded["row"].to_list(), strict=True))
    expected = pixels[[rows_of[ids[a]] for a in at]]
    assert np.array_equal(got, expected)
