"""The picture grids of dedup_assets.core.quality.plots: `image_rows` (the training asset's
originals above their reconstructions) draws every image it is given where its row says,
at one size, for rows of 0, 1, 2 and unequal lengths; `duplicate_pairs` (the keep list's
removed pairs) each kept image above the image removed as its duplicate."""

import io

import numpy as np
import pytest
from conftest import run_python
from PIL import Image

from dedup_assets.core.quality.plots import PAIR_CELL, PAIR_MARGIN, duplicate_pairs, image_rows

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


GREEN = (0, 200, 0)


def _pairs(n: int, kept: np.ndarray | None = None, removed: np.ndarray | None = None) -> bytes:
    return duplicate_pairs(
        _solid(n, RED) if kept is None else kept,
        _solid(n, BLUE) if removed is None else removed,
        [0.95 + k / 1000 for k in range(n)],
        [f"Forêt é [x]/ñame {k} with a long name.jpg" for k in range(n)],
        [f"dogs/{k}.png" for k in range(n)],
        "the image of highest density is kept",
    )


@pytest.mark.parametrize("n", [0, 1, 2, 8])
def test_each_kept_image_stands_above_the_image_removed_as_its_duplicate(n):
    picture = _decode(_pairs(n))
    assert picture.shape[1] == PAIR_MARGIN + max(n, 1) * PAIR_CELL
    red, blue = _pure(picture, RED), _pure(picture, BLUE)
    if n == 0:
        assert not red.any() and not blue.any()
        return
    assert red.any(axis=1).nonzero()[0].max() < blue.any(axis=1).nonzero()[0].min()
    for k in range(n):  # column k: one red square above one blue square, the same size
        cols = slice(PAIR_MARGIN + k * PAIR_CELL, PAIR_MARGIN + (k + 1) * PAIR_CELL)
        assert red[:, cols].sum() == blue[:, cols].sum() > 100 * 100


def test_grey_odd_shaped_and_float_images_are_drawn_whole():
    """A grey image (H x W), a 16 x 48 strip and floats in [0, 1] fit their square with
    their shape kept (the strip three times as wide as high), every pixel drawn."""
    grey = np.full((32, 32), 200, np.uint8)
    strip = np.zeros((16, 48, 3), np.float32)
    strip[..., 1] = 200 / 255
    picture = _decode(duplicate_pairs([grey], [strip], [0.97], ["a.png"], ["b.png"], ""))
    assert _pure(picture, (200, 200, 200)).sum() > 100 * 100
    green = _pure(picture, GREEN)
    rows, cols = green.any(axis=1).sum(), green.any(axis=0).sum()
    assert cols == pytest.approx(3 * rows, abs=2) and green.sum() == rows * cols


def test_the_pairs_picture_needs_no_matplotlib():
    """Drawn in the command's process beside the cross-class join: Matplotlib's import was
    most of the keep list's time (a fresh interpreter: nothing imports it)."""
    code = (
        "import sys, numpy as np\n"
        "from dedup_assets.core.quality.plots import duplicate_pairs\n"
        "png = duplicate_pairs(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8),"
        " [0.9, 0.95], ['a', 'b'], ['c', 'd'], 'note')\n"
        "assert png[:8] == b'\\x89PNG\\r\\n\\x1a\\n'\n"
        "print('matplotlib' in sys.modules)\n"
    )
    assert run_python(code).strip() == "False"
