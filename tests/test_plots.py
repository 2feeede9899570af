"""The picture grids of dedup_assets.core.quality.plots: `image_rows` (the training asset's
originals above their reconstructions) draws every image it is given where its row says,
at one size, for rows of 0, 1, 2 and unequal lengths."""

import io

import numpy as np
import pytest
from PIL import Image

from dedup_assets.core.quality.plots import image_rows

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _solid(n: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (n, 64, 64, 3)).copy()


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _pure(picture: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (picture == np.array(colour)).all(axis=-1)


@pytest.mark.parametrize("n", [1, 2, 10])
def test_each_image_lands_in_its_row(n):
    picture = _decode(image_rows([_solid(n, RED), _solid(n, BLUE)], ["top", "bottom"]))
    red_rows = np.flatnonzero(_pure(picture, RED).any(axis=1))
    blue_rows = np.flatnonzero(_pure(picture, BLUE).any(axis=1))
    assert red_rows.size and blue_rows.size
    assert red_rows.max() < blue_rows.min()  # the first row above the second
    # n separate squares of red across the picture (columns with red, in n runs).
    red_cols = _pure(picture, RED).any(axis=0).astype(np.int8)
    assert int((np.diff(red_cols) == 1).sum() + red_cols[0]) == n


def test_width_follows_the_longest_row_and_a_short_row_is_drawn_as_far_as_it_goes():
    one = _decode(image_rows([_solid(1, RED)], ["one"]))
    five = _decode(image_rows([_solid(5, RED), _solid(2, BLUE)], ["five", "two"]))
    assert five.shape[1] == pytest.approx(5 * one.shape[1], rel=0.02)
    blue_cols = _pure(five, BLUE).any(axis=0)
    assert blue_cols[: five.shape[1] // 2].any() and not blue_cols[five.shape[1] // 2 :].any()


def test_an_empty_row_draws_no_image():
    picture = _decode(image_rows([_solid(0, RED)], ["nothing"]))
    assert picture.shape[0] > 0 and not _pure(picture, RED).any()
