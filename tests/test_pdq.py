"""The PDQ baseline (`core.decision.pdq`): copies near, unrelated images far, and the
blockwise Hamming distances equal to counting differing bits pair by pair; the `pdq`
space of the evaluation (`class_decision`), whose dot products are 1 - Hamming/256."""

from __future__ import annotations

import io

import numpy as np
import pdqhash
import pytest
from PIL import Image, ImageEnhance

from dedup_assets.core.decision import pdq
from dedup_assets.core.decision.class_decision import (
    PIXEL_SPACES,
    VECTORISERS,
    ClassData,
    decide_class,
    needs_pixels,
    vectorise,
    vectorise_as,
)
from dedup_assets.core.decision.pdq import (
    HASH_BITS,
    hamming_matrix,
    nearest_hamming,
    pack_bits,
    pdq_hashes,
    pdq_similarity,
)
from dedup_assets.core.decision.reference_pool import ReferencePool, build_reference_pool
from dedup_assets.core.quality.evaluation import METHODS


def _scene(seed: int, size: int = 128) -> np.ndarray:
    """A smooth random colour field with a few blobs: structure at several scales."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(4):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _resized_brighter(img: np.ndarray) -> np.ndarray:
    pil = Image.fromarray(img).resize((96, 96), Image.BILINEAR).resize(img.shape[:2], Image.BICUBIC)
    return np.asarray(ImageEnhance.Brightness(pil).enhance(1.15))


def test_copies_are_near_and_unrelated_images_far():
    originals = np.stack([_scene(s) for s in range(6)])
    copies = np.stack([_resized_brighter(x) for x in originals])
    h = pdq_hashes(np.concatenate([originals, originals, copies]))
    assert h.bits.shape == (18, HASH_BITS) and (h.quality > 0).all()
    d = hamming_matrix(h.packed[:6], h.packed)
    assert (np.diag(d[:, 6:12]) == 0).all()  # exact copies: distance 0
    near = np.diag(d[:, 12:18])
    assert (near <= 31).all(), near  # PDQ's own match distance
    unrelated = d[:, :6][~np.eye(6, dtype=bool)]
    assert unrelated.min() > 64, unrelated  # far: an unrelated pair differs in ~half the bits
    assert near.max() < unrelated.min()
    assert pdq_similarity(0) == 1.0 and pdq_similarity(128) == 0.5


def test_blockwise_distances_equal_counting_bits_pair_by_pair(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.random((37, HASH_BITS)) < 0.5
    b = rng.random((53, HASH_BITS)) < 0.5
    b[5] = a[3]
    want = (a[:, None, :] != b[None, :, :]).sum(axis=2)
    monkeypatch.setattr(pdq, "MAX_BLOCK_BYTES", 4 * 53 * 8 * 5)  # 5 rows a block: 8 blocks
    assert np.array_equal(hamming_matrix(pack_bits(a), pack_bits(b)), want)
    dist, at = nearest_hamming(pack_bits(a), pack_bits(b))
    assert np.array_equal(dist, want.min(axis=1))
    assert np.array_equal(want[np.arange(37), at], dist)
    assert dist[3] == 0 and at[3] == 5
    # excluding the one identical reference leaves query 3 its next nearest
    exclude = np.full(37, -1)
    exclude[3] = 5
    dist2, at2 = nearest_hamming(pack_bits(a), pack_bits(b), exclude=exclude)
    assert at2[3] != 5 and dist2[3] == np.sort(want[3])[1]
    assert np.array_equal(np.delete(dist2, 3), np.delete(dist, 3))
    empty = nearest_hamming(pack_bits(a), pack_bits(b[:0]))
    assert (empty[0] == HASH_BITS + 1).all() and (empty[1] == -1).all()


# ------------------------------------------------------------- the evaluation's pdq space


def _photo_tiles() -> np.ndarray:
    """A real photograph (matplotlib's sample of Grace Hopper, installed with matplotlib):
    six 192 px tiles at 64x64, as the pixel store holds images, then a JPEG (quality 50)
    of tile 0, tile 1 15% brighter, tile 2 scaled down and up, and an exact copy of tile 3."""
    from matplotlib import cbook

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    photo = photo.convert("RGB")
    corners = [(0, 0), (300, 0), (150, 150), (0, 300), (300, 300), (100, 400)]
    tiles = [
        photo.crop((x, y, x + 192, y + 192)).resize((64, 64), Image.BICUBIC) for x, y in corners
    ]
    buf = io.BytesIO()
    tiles[0].save(buf, "JPEG", quality=50)
    copies = [
        Image.open(buf).convert("RGB"),
        ImageEnhance.Brightness(tiles[1]).enhance(1.15),
        tiles[2].resize((40, 40), Image.BILINEAR).resize((64, 64), Image.BICUBIC),
        tiles[3],
    ]
    return np.stack([np.asarray(t, dtype=np.uint8) for t in tiles + copies])


def _reference_hamming(pixels: np.ndarray) -> np.ndarray:
    """All Hamming distances of pdqhash's own hashes, counted pair by pair."""
    bits = np.stack([np.asarray(pdqhash.compute(np.ascontiguousarray(p))[0]) != 0 for p in pixels])
    return (bits[:, None, :] != bits[None, :, :]).sum(axis=2)


def _photo_class(pixels: np.ndarray) -> ClassData:
    n = len(pixels)
    hashes = np.array([f"h{i}" for i in range(n)])
    hashes[9] = hashes[3]  # the exact copy: the same decoded pixels
    return ClassData(
        np.array([f"{i:02d}" for i in range(n)]),
        hashes,
        np.zeros((n, 8), np.float32),  # no latents are read in a pixel space
        None,  # type: ignore[arg-type]
        pixels,
    )


def test_pdq_is_a_pixel_space_and_an_evaluation_method_beside_phash():
    assert "pdq" in VECTORISERS and "pdq" in PIXEL_SPACES and needs_pixels(None, "pdq")
    assert METHODS.index("pdq") == METHODS.index("phash") + 1


def test_pdq_vectors_dot_products_are_exactly_one_minus_hamming_over_256_on_a_photo():
    pixels = _photo_tiles()
    hamming = _reference_hamming(pixels)
    v = vectorise(_photo_class(pixels), "pdq")
    assert v.shape == (len(pixels), 2 * HASH_BITS + 2) and v.dtype == np.float32
    # Every entry is a multiple of 1/1024: the float32 products are exact, not close.
    want = (1.0 - hamming / 256.0).astype(np.float32)
    np.testing.assert_array_equal(v @ v.T, want)
    np.testing.assert_array_equal(np.diag(v @ v.T), 1.0)  # unit vectors
    # the same scale as `pdq_similarity` of the blockwise distances, and as pHash's
    h = pdq_hashes(pixels)
    np.testing.assert_array_equal(want, pdq_similarity(hamming_matrix(h.packed, h.packed)))
    # copies near (PDQ's own match distance, 31), the exact copy at 0, tiles far
    assert hamming[3, 9] == 0 and float(v[3] @ v[9]) == 1.0
    assert all(hamming[i, 6 + i] <= 31 for i in range(3)), hamming
    tiles = hamming[:6, :6][~np.eye(6, dtype=bool)]
    assert tiles.min() > 64, tiles


def test_the_pdq_space_decides_a_class_of_a_photos_copies():
    """decide_class in `pdq`: the exact copy is removed as exact (similarity 1.0), each
    near copy names its original with similarity exactly 1 - Hamming/256, the tiles stay."""
    pixels = _photo_tiles()
    hamming = _reference_hamming(pixels)
    (d,) = decide_class(_photo_class(pixels), [0.85], space="pdq", policy="first")
    assert d.space == "pdq"
    assert d.kept[:6].all() and not d.kept[6:].any()
    np.testing.assert_array_equal(d.duplicate_of[6:], [0, 1, 2, 3])
    assert d.exact[9] and d.similarity[9] == 1.0
    for i in range(3):
        assert not d.exact[6 + i]
        assert d.similarity[6 + i] == np.float32(1.0 - hamming[i, 6 + i] / 256.0)


def test_the_reference_pool_holds_pdq_bits_for_the_pdq_budget():
    """A budget in `pdq` borrows the pool's images in `pdq` (its own unfitted space): the
    pool stores their PDQ bits (no pixels), and its vectors equal the images' own."""
    pixels = _photo_tiles()
    keys = ["a", "b"]
    pool = build_reference_pool(
        keys,
        [pixels[:5], pixels[5:]],
        [np.array([f"a{i}" for i in range(5)]), np.array([f"b{i}" for i in range(5)])],
        lambda px: np.zeros((len(px), 1024), np.float32),
    )
    assert pool.pdq.shape == (10, HASH_BITS) and pool.pdq.dtype == bool
    np.testing.assert_array_equal(pool.pdq, pdq_hashes(pixels).bits)
    again = ReferencePool.from_arrays(pool.to_arrays())
    np.testing.assert_array_equal(again.pdq, pool.pdq)
    np.testing.assert_array_equal(
        vectorise_as(again.as_class(None), "pdq"), vectorise(_photo_class(pixels), "pdq")
    )
    assert ReferencePool.empty().pdq.shape == (0, HASH_BITS)
    with pytest.raises(ValueError, match="needs the class's pixels"):
        vectorise(ClassData(np.array(["x"]), np.array(["x"]), np.zeros((1, 8)), None), "pdq")


@pytest.mark.parametrize("space", ["dct", "phash", "pdq"])
def test_a_pool_borrowed_in_a_descriptor_space_leaves_its_latents_behind(space):
    """A small class borrows the pool in its unfitted space: the pool's images come with that
    descriptor alone and without their latents (width 0, not copied), their vectors those
    of the images with them, and a latent space refuses them rather than read zeros."""
    pixels = _photo_tiles()
    latents = np.random.default_rng(0).standard_normal((len(pixels), 1024)).astype(np.float32)
    pool = build_reference_pool(
        ["a", "b"],
        [pixels[:5], pixels[5:]],
        [np.array([f"a{i}" for i in range(5)]), np.array([f"b{i}" for i in range(5)])],
        lambda px: latents[: len(px)],
    )
    rows = pool.others("a", np.array(["a0"]))
    light = pool.as_class(None, rows, space)
    assert light.latents.shape == (int(rows.sum()), 0)
    assert set(light.descriptors) == {space}  # that descriptor alone is copied
    full = pool.as_class(None, rows)
    assert full.latents.shape == (int(rows.sum()), 1024)
    np.testing.assert_array_equal(vectorise_as(light, space), vectorise_as(full, space))
    for latent_space in ("raw", "whitened"):
        with pytest.raises(ValueError, match="needs the images' latents"):
            vectorise_as(light, latent_space)
    assert pool.as_class(None, rows, "raw").latents.shape == (int(rows.sum()), 1024)


@pytest.mark.parametrize("seed", range(6))
def test_a_pool_s_others_are_the_images_of_other_classes_without_the_class_s_pixels(seed):
    """`ReferencePool.others` (looked up in the pool's index of keys and hashes) is, for
    every class and any hashes, the pool images of other classes whose pixel hash is none
    of the class's, as comparing every key and hash says: pools of 0, 1, 2 and many images,
    one class or many, repeated hashes, odd keys, hashes absent from the pool, none given,
    a key the pool does not hold; the index is built once and the pool left as it was."""
    from dedup_assets.core.data.membership import among

    rng = np.random.default_rng(seed)
    size = [0, 1, 2, 50, 500, 4096][seed]
    names = np.array(["a", "b b", "é/ü", "", "a.1", "[x]"])
    keys = names[rng.integers(0, 1 if seed == 3 else len(names), size)]
    hashes = np.array([f"h{i}" for i in rng.integers(0, max(1, size // 3), size)])
    pool = ReferencePool(
        np.zeros((size, 4), np.float32),
        np.zeros((size, 63), np.float32),
        np.zeros((size, 64), bool),
        np.zeros((size, 256), bool),
        keys.astype(str),
        hashes.astype(str),
    )
    before = (pool.class_keys.copy(), pool.pixel_hashes.copy())
    for key in [*names, "not in the pool"]:
        for mine in (
            np.array([], dtype=str),
            hashes[rng.integers(0, max(1, size), 3)] if size else np.array(["h0"]),
            np.array(["nowhere", "h0", "h0"]),
            hashes,
        ):
            expected = pool.class_keys != key
            if len(mine):
                expected &= ~among(pool.pixel_hashes, mine)
            got = pool.others(key, mine)
            assert got.dtype == bool and got.shape == (size,)
            np.testing.assert_array_equal(got, expected)
    assert pool.__dict__["_rows_of"] is pool._rows_of  # built once
    np.testing.assert_array_equal(pool.class_keys, before[0])
    np.testing.assert_array_equal(pool.pixel_hashes, before[1])
    assert ReferencePool.empty().others("a", np.array(["h"])).shape == (0,)
