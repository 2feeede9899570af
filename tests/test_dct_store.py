"""The stored DCT descriptors (`core.decision.dct_store`): what an update reads instead of
computing them again must be exactly what computing them gives, for the images it has."""

import numpy as np
import pytest

from dedup_assets.core.data.image_folder import pixel_hash
from dedup_assets.core.decision.dct_descriptor import DIMENSIONS, lowfreq_dct
from dedup_assets.core.decision.dct_store import VERSION, class_descriptors


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


class _Pixels:
    """`pixels_of` over a set of images, recording which it was asked for."""

    def __init__(self, pixels: np.ndarray):
        self.pixels, self.asked = pixels, []

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        self.asked.append(np.asarray(indices).tolist())
        return self.pixels[indices]


def _hashes(pixels: np.ndarray) -> np.ndarray:
    return np.array([pixel_hash(p) for p in pixels])


@pytest.mark.parametrize("n", [0, 1, 2, 37])
def test_descriptors_are_the_computed_ones_first_and_when_read_back(tmp_path, n):
    pixels = _images(n, 0)
    path = tmp_path / "c.dct.npz"
    first = _Pixels(pixels)
    got = class_descriptors(path, _hashes(pixels), first)
    assert got.shape == (n, DIMENSIONS) and got.dtype == np.float32
    np.testing.assert_array_equal(got, lowfreq_dct(pixels))
    assert first.asked == [list(range(n))] if n else first.asked == []
    again = _Pixels(pixels)
    np.testing.assert_array_equal(class_descriptors(path, _hashes(pixels), again), got)
    assert again.asked == []  # nothing computed, no pixel read


def test_an_update_computes_its_new_images_only_and_the_store_follows_the_class(tmp_path):
    old, new = _images(30, 1), _images(5, 2)
    path = tmp_path / "c.dct.npz"
    class_descriptors(path, _hashes(old), _Pixels(old))
    # New images between old ones, and two old ones gone.
    pixels = np.concatenate([old[:10], new[:2], old[12:], new[2:]])
    asked = _Pixels(pixels)
    got = class_descriptors(path, _hashes(pixels), asked)
    np.testing.assert_array_equal(got, lowfreq_dct(pixels))
    assert asked.asked == [[10, 11, 30, 31, 32]]
    with np.load(path) as stored:
        assert sorted(stored["pixel_hashes"].tolist()) == sorted(_hashes(pixels).tolist())
    # Images taken out only: nothing computed, the store narrowed to the class's images.
    fewer = pixels[5:]
    asked = _Pixels(fewer)
    np.testing.assert_array_equal(
        class_descriptors(path, _hashes(fewer), asked), lowfreq_dct(fewer)
    )
    assert asked.asked == []
    with np.load(path) as stored:
        assert len(stored["pixel_hashes"]) == len(fewer)


def test_exact_copies_and_an_all_identical_class_share_one_stored_row(tmp_path):
    one = _images(1, 3)
    pixels = np.repeat(one, 4, axis=0)
    path = tmp_path / "c.dct.npz"
    got = class_descriptors(path, _hashes(pixels), _Pixels(pixels))
    np.testing.assert_array_equal(got, np.repeat(lowfreq_dct(one), 4, axis=0))
    with np.load(path) as stored:
        assert len(stored["pixel_hashes"]) == 1
    asked = _Pixels(pixels)
    np.testing.assert_array_equal(class_descriptors(path, _hashes(pixels), asked), got)
    assert asked.asked == []


@pytest.mark.parametrize("damage", ["garbage", "other_version", "wrong_shape", "unsorted"])
def test_a_damaged_or_foreign_store_is_computed_again_not_trusted(tmp_path, damage):
    pixels = _images(6, 4)
    hashes = _hashes(pixels)
    path = tmp_path / "c.dct.npz"
    wrong = np.ones((6, DIMENSIONS), np.float32)
    order = np.argsort(hashes)
    if damage == "garbage":
        path.write_bytes(b"not an npz")
    elif damage == "other_version":
        np.savez(path, version=np.array("v0"), pixel_hashes=hashes[order], descriptors=wrong)
    elif damage == "wrong_shape":
        np.savez(
            path, version=np.array(VERSION), pixel_hashes=hashes[order], descriptors=wrong[:, :5]
        )
    else:
        np.savez(
            path, version=np.array(VERSION), pixel_hashes=hashes[order][::-1], descriptors=wrong
        )
    asked = _Pixels(pixels)
    np.testing.assert_array_equal(class_descriptors(path, hashes, asked), lowfreq_dct(pixels))
    assert asked.asked == [list(range(6))]
    asked = _Pixels(pixels)  # and rewritten right: read back now
    np.testing.assert_array_equal(class_descriptors(path, hashes, asked), lowfreq_dct(pixels))
    assert asked.asked == []


def test_an_images_descriptor_does_not_depend_on_the_images_computed_beside_it():
    """What makes a stored descriptor the one a full run computes again: bit for bit, an
    image's descriptor is the same alone, in a chunk of others, or at another position."""
    pixels = _images(200, 5)
    every = lowfreq_dct(pixels)
    for start in (1, 7, 63, 64, 65, 130):
        np.testing.assert_array_equal(lowfreq_dct(pixels[start:]), every[start:])
        np.testing.assert_array_equal(
            lowfreq_dct(pixels[start : start + 1]), every[start : start + 1]
        )
