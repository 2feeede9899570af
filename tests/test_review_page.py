"""The review page (`core.quality.review_page`, asset `review_page`) on a real run of a tiny
dataset with hostile file and class names: every removed image beside its kept partner,
borderline first, paged, thumbnails made once, cross-class pairs apart, names shown as
text in a real browser, and the overrides a user downloads."""

import csv
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from dedup_assets.core.data.artifacts import catalog_images, open_pixels, read_catalog
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.core.quality.review_page import (
    AS_SOURCE,
    KIND_ORDER,
    PNG_CHUNK,
    png_files,
    removed_pairs,
    script_json,
    shown_as_source,
    shown_thumbnails,
    write_review_page,
)

THRESHOLDS = ("0.9", "1%")
PAGE_SIZE = 3  # small: every view has several pages
# A file name cannot hold "/", so this one is a folder '"><script>alert(1)<' below the class
# holding 'script>.png': its path below the source reads as the hostile name.
SCRIPT_NAME = '"><script>alert(1)</script>.png'
IMG_NAME = "<img src=x onerror=alert(1)>.jpg"
HOSTILE_CLASS = "<img src=x onerror=document.title='PWNED'>"
SCRIPT_PATH = f"forest/{SCRIPT_NAME}"
IMG_PATH = f"forest/{IMG_NAME}"
TITLE = "latent-dedup review"
THUMBS = {"sources_as_thumbnails": False}  # thumbnails even for 64x64 RGB source files


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)


def build_source(root: Path) -> None:
    """The demo set plus exact copies under hostile names (so they are removed or named as
    kept, and shown), and a class with a hostile name holding a copy of a desert image (a
    cross-class pair) and a copy of one of its own images."""
    generate_demo_dataset(root, seed=5, per_class=10, duplicate_fraction=0.3)
    forest = root / "forest"
    folder, name = SCRIPT_NAME.rsplit("/", 1)
    (forest / folder).mkdir()
    shutil.copyfile(forest / "forest_000.png", forest / folder / name)
    shutil.copyfile(forest / "forest_001.png", forest / IMG_NAME)
    hostile = root / HOSTILE_CLASS
    hostile.mkdir()
    shutil.copyfile(root / "desert" / "desert_000.png", hostile / "from desert.png")
    for i in range(3):
        _picture(700 + i).save(hostile / f"own_{i}.png")
    shutil.copyfile(hostile / "own_0.png", hostile / "own_0 again.png")


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    import dagster as dg

    from dedup_assets.config import PipelineConfig
    from dedup_assets.runner import run_pipeline

    base = tmp_path_factory.mktemp("review")
    source, output = base / "source", base / "out"
    build_source(source)
    config = PipelineConfig.build(
        source=str(source),
        output=str(output),
        thresholds=THRESHOLDS,
        device="cpu",
        precision="fp32",
        method={"epochs": 1, "batch_size": 32, "n_components": 8, "kurtosis_tolerance": 1.0},
    )
    instance = dg.DagsterInstance.ephemeral()
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert not outcome.failures, outcome.failures
    layout = OutputLayout(output)
    # The run made the page (review_page in summary_job); made again from nothing here, at
    # this test's page size, to count the thumbnails a first page writes.
    assert layout.review_index.is_file()
    shutil.rmtree(layout.review_dir)
    # Its images are 64x64 PNGs, shown from their source files by default
    # (`test_source_files_holding_the_decisions_pixels_need_no_thumbnail`): the thumbnails
    # are made here, as for any other images, to test them.
    first = write_review_page(layout, THRESHOLDS, source_root=source, page_size=PAGE_SIZE, **THUMBS)
    second = write_review_page(
        layout, THRESHOLDS, source_root=source, page_size=PAGE_SIZE, **THUMBS
    )
    data, pages = read_pages(layout)
    return {
        "source": source,
        "layout": layout,
        "config": config,
        "instance": instance,
        "first": first,
        "second": second,
        "data": data,
        "pages": pages,
    }


def read_pages(layout: OutputLayout) -> tuple[dict, dict[str, list]]:
    """The page's embedded data and every page's rows, by key `<t>/<view>/<n>`."""
    text = layout.review_index.read_text()
    found = re.search(
        r'<script type="application/json" id="review-data">(.*?)</script>', text, re.S
    )
    assert found, "no data block"
    data = json.loads(found.group(1))
    pages = {data["first"]["key"]: data["first"]["rows"]} if data["first"]["rows"] else {}
    folder = layout.review_dir / data["pages"]
    for path in folder.rglob("*.js"):
        body = path.read_text()
        assert body.startswith("__reviewData(") and body.endswith(");\n")
        key, rows = json.loads("[" + body[len("__reviewData(") : -3] + "]")
        assert key == path.relative_to(folder).with_suffix("").as_posix()
        pages[key] = rows
    return data, pages


def view_rows(data: dict, pages: dict, t: int, view: str) -> list[list]:
    entry = data["thresholds"][t]
    count = entry["pages"][view] if view in ("all", "x") else entry["classPages"][int(view[1:])]
    return [row for n in range(count) for row in pages[f"{t}/{view}/{n}"]]


def locate(data: dict, pages: dict, path: str, views=("all",)) -> str:
    """The hash of the first page of those views that shows `path`."""
    for key in sorted(pages):
        t, view, n = key.split("/")
        if view in views and any(path in row for row in pages[key]):
            return f"#t={t}&v={view}&p={n}"
    raise AssertionError(f"{path} is on no page")


# ---------------------------------------------------------------------------- the content


def test_every_removed_image_is_listed_beside_its_kept_image(review):
    layout, data, pages = review["layout"], review["data"], review["pages"]
    assert [t["key"] for t in data["thresholds"]] == list(THRESHOLDS)
    for ti, t in enumerate(THRESHOLDS):
        keep = pl.read_parquet(layout.keep_list(t))
        path_of = dict(zip(keep["image_id"], keep["path"], strict=True))
        removed = keep.filter(~pl.col("kept"))
        expected = {
            (r["path"], path_of[r["duplicate_of"]], r["match"]): (r["similarity"], r["cosine"])
            for r in removed.iter_rows(named=True)
        }
        rows = view_rows(data, pages, ti, "all")
        assert len(rows) == removed.height == review["second"].pairs[t] > 0
        shown = {(r[1], r[2], r[7]): (r[5], r[6]) for r in rows}
        assert shown.keys() == expected.keys()
        for pair, (similarity, margin) in shown.items():
            sim, cosine = expected[pair]
            assert similarity == pytest.approx(sim, abs=1e-4)
            assert margin == pytest.approx(sim - cosine, abs=2e-4)  # over its own threshold
        assert {r[0] for r in rows} <= set(range(len(data["classes"])))
        entry = data["thresholds"][ti]
        assert (entry["removed"], entry["exact"], entry["near"]) == (
            removed.height,
            int((removed["match"] == "exact").sum()),
            int((removed["match"] == "near").sum()),
        )
    # The hostile names were exact copies: shown in a pair at every threshold.
    for ti in range(len(THRESHOLDS)):
        names = {p for r in view_rows(data, pages, ti, "all") for p in r[1:3]}
        assert {SCRIPT_PATH, IMG_PATH} <= names


def test_borderline_pairs_come_first_and_exact_copies_last(review):
    data, pages = review["data"], review["pages"]
    for ti in range(len(THRESHOLDS)):
        views = ["all"] + [f"c{k}" for k in range(len(data["classes"]))]
        for view in views:
            rows = view_rows(data, pages, ti, view)
            kinds = [r[7] for r in rows]
            assert kinds == sorted(kinds, key=KIND_ORDER.__getitem__), view
            margins = [r[6] for r in rows if r[7] == "near"]
            assert margins == sorted(margins), view


def test_removals_by_override_come_after_the_models_and_may_name_no_kept_image():
    keep = pl.DataFrame(
        {
            "image_id": ["k", "n1", "n2", "o", "e"],
            "class": ["c"] * 5,
            "path": ["c/k.png", "c/n1.png", "c/n2.png", "c/o.png", "c/e.png"],
            "kept": [True, False, False, False, False],
            "duplicate_of": [None, "k", "k", None, "k"],
            "similarity": [None, 0.99, 0.97, None, 1.0],
            "match": [None, "near", "near", "override", "exact"],
            "cosine": [0.95] * 5,
        }
    )
    thumbs = pl.DataFrame({"image_id": ["k", "n1"], "thumb": ["ab" * 8, "cd" * 8]})
    rows = removed_pairs(keep, thumbs, {"c": 0}).rows()
    assert [r[1] for r in rows] == ["c/n2.png", "c/n1.png", "c/o.png", "c/e.png"]
    assert rows[0][2:8] == ("c/k.png", None, "ab" * 8, 0.97, pytest.approx(0.02), "near")
    assert rows[2][2:8] == (None, None, None, None, None, "override")
    # each side's size as stored, so the original and its lesser copy can be told apart
    sized = thumbs.with_columns(pl.Series("size", ["4000×3000 · 2.3 MB", "800×600 · 91 KB"]))
    rows = removed_pairs(keep, sized, {"c": 0}).rows(named=True)
    assert (rows[1]["path"], rows[1]["size"], rows[1]["kept_size"]) == (
        "c/n1.png",
        "800×600 · 91 KB",
        "4000×3000 · 2.3 MB",
    )


def test_a_file_s_size_is_its_pixels_as_stored_and_its_bytes():
    from dedup_assets.core.quality.review_page import file_size_words

    table = pl.DataFrame(
        {"width": [4000, 64, 1], "height": [3000, 64, 1], "size_bytes": [2_400_000, 12_300, 0]}
    )
    assert table.select(file_size_words())["size"].to_list() == [
        "4000×3000 · 2.3 MB",
        "64×64 · 12 KB",
        "1×1 · 0 KB",
    ]


def test_pages_split_every_view_and_the_class_views_add_up(review):
    data, pages = review["data"], review["pages"]
    assert data["pageSize"] == PAGE_SIZE
    assert all(len(rows) <= PAGE_SIZE for rows in pages.values())
    for ti in range(len(THRESHOLDS)):
        entry = data["thresholds"][ti]
        assert entry["pages"]["all"] >= 2
        everything = view_rows(data, pages, ti, "all")
        by_class = [
            row for k in range(len(data["classes"])) for row in view_rows(data, pages, ti, f"c{k}")
        ]
        assert sorted(map(json.dumps, by_class)) == sorted(map(json.dumps, everything))
        for k in range(len(data["classes"])):
            assert all(r[0] == k for r in view_rows(data, pages, ti, f"c{k}"))
    # Only the first page is embedded; the others are small script files beside the page.
    assert data["first"]["key"] == "0/all/0" and len(data["first"]["rows"]) == PAGE_SIZE
    assert review["second"].page_files == len(pages) - 1


def test_cross_class_pairs_have_their_own_pages(review):
    layout, data, pages = review["layout"], review["data"], review["pages"]
    for ti, t in enumerate(THRESHOLDS):
        cross = pl.read_parquet(layout.cross_class(t))
        rows = view_rows(data, pages, ti, "x")
        assert len(rows) == cross.height == data["thresholds"][ti]["cross"] >= 1
        pairs = {
            frozenset(((data["classes"][r[0]], r[1]), (data["classes"][r[2]], r[3]))) for r in rows
        }
        assert (
            frozenset(
                (
                    (HOSTILE_CLASS, f"{HOSTILE_CLASS}/from desert.png"),
                    ("desert", "desert/desert_000.png"),
                )
            )
            in pairs
        )
        margins = [r[7] for r in rows]
        if t.endswith("%"):
            assert margins == [None] * len(rows)  # the budget's cross-class cosine is not stored
        else:
            assert margins == pytest.approx([r[6] - float(t) for r in rows], abs=2e-4)


def test_thumbnails_are_made_once_from_the_pixel_store(review):
    layout, pages = review["layout"], review["pages"]
    first, second = review["first"], review["second"]
    needed = {
        h
        for key, rows in pages.items()
        for r in rows
        for h in ((r[3], r[4]) if key.split("/")[1] != "x" else (r[4], r[5]))
        if h
    }
    assert first.thumbnails_written == len(needed) > 0 and first.thumbnails_reused == 0
    assert second.thumbnails_written == 0 and second.thumbnails_reused == len(needed)
    files = {p.stem for p in layout.review_thumbs.glob("*/*.png")}
    assert files == needed
    # Named by the pixel hash, never by a file name; the pixels are the catalog's own.
    catalog = catalog_images(read_catalog(layout))
    row = catalog.filter(pl.col("path") == IMG_PATH).row(0, named=True)
    png = layout.review_thumbs / row["pixel_hash"][:2] / f"{row['pixel_hash']}.png"
    np.testing.assert_array_equal(
        np.asarray(Image.open(png).convert("RGB")),
        open_pixels(layout, row["class_key"])[row["row"]],
    )
    # A rerun makes only what is missing, and removes what no page shows.
    png.unlink()
    unused = layout.review_thumbs / "ff" / f"{'f' * 16}.png"
    unused.parent.mkdir(exist_ok=True)
    unused.write_bytes(b"")
    third = write_review_page(
        layout, THRESHOLDS, source_root=review["source"], page_size=PAGE_SIZE, **THUMBS
    )
    assert (third.thumbnails_written, third.thumbnails_reused) == (1, len(needed) - 1)
    assert third.thumbnails_removed == 1 and not unused.exists()
    assert png.is_file() and third.build == second.build


@pytest.mark.parametrize("n", [0, 1, 2, PNG_CHUNK + 1, 3 * PNG_CHUNK])
def test_thumbnails_are_the_same_pngs_on_any_number_of_threads(n):
    """The PNGs compressed on several threads: the same bytes, in the image order, as on
    one, and each decodes (Pillow) to its image's pixels exactly."""
    rng = np.random.default_rng(n)
    pixels = rng.integers(0, 256, (n, 9, 7, 3), dtype=np.uint8)
    pixels[: n // 2] //= 32  # some compress well, some do not
    one = png_files(pixels, threads=1)
    assert len(one) == n
    for threads in (2, 3, 8):
        assert png_files(pixels, threads=threads) == one
    for k in {k for k in (0, n // 2, n - 1) if 0 <= k < n}:
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(one[k]))), pixels[k])


def _page_hashes(key: str, rows: list) -> list:
    view = key.split("/")[1]
    return [h for r in rows for h in ((r[4], r[5]) if view == "x" else (r[3], r[4]))]


@pytest.mark.parametrize("cap", [0, 1, 5])
def test_thumbnails_beyond_the_cap_are_the_source_files_of_the_later_pages(review, tmp_path, cap):
    """At most `max_thumbnails` thumbnails, the first pages' first: an image left out is
    shown from its source file (its row carries no thumbnail), and no page k + 1 of any list
    has a thumbnail while a page k lacks one."""
    layout = OutputLayout(tmp_path / "out")
    shutil.copytree(review["layout"].root, layout.root, ignore=shutil.ignore_patterns(".dagster"))
    shutil.rmtree(layout.review_dir)
    full = review["first"].thumbnails_written
    page = write_review_page(
        layout,
        THRESHOLDS,
        source_root=review["source"],
        page_size=PAGE_SIZE,
        max_thumbnails=cap,
        **THUMBS,
    )
    data, pages = read_pages(layout)
    files = {p.stem for p in layout.review_thumbs.glob("*/*.png")}
    shown = {h for key, rows in pages.items() for h in _page_hashes(key, rows) if h}
    assert len(files) == page.thumbnails_written == min(cap, full) and files == shown
    assert page.thumbnails_left_out == full - min(cap, full) == data["thumbnailsLeftOut"]
    # Every row is still there, with its path: the page shows the source file instead.
    assert sum(len(rows) for rows in pages.values()) == sum(
        len(rows) for rows in review["pages"].values()
    )
    assert data["source"] == review["source"].resolve().as_uri()
    assert "thumb original" in layout.review_index.read_text()
    # Page order: the latest page number with a thumbnail precedes every page lacking one
    # (a page's number in its class list, where a removed pair appears earliest).
    with_thumb = [int(k.rsplit("/", 1)[1]) for k, r in pages.items() if any(_page_hashes(k, r))]
    lacking = [int(k.rsplit("/", 1)[1]) for k, r in pages.items() if not all(_page_hashes(k, r))]
    if cap and lacking:
        assert min(with_thumb) <= min(lacking)


def test_shown_as_source_is_exactly_the_files_holding_the_decisions_pixels():
    """A source file stands in for its thumbnail exactly when it is 64x64 (decoded with no
    resize), RGB or grey (nothing a browser would show otherwise than the RGB conversion)
    and a JPEG, PNG or WebP by its name (any case); every other combination is not."""
    import itertools

    sizes = [(64, 64), (63, 64), (64, 65), (128, 128), (32, 64), (None, None)]
    raw = {"k.jpg": b"k\xff.jpg"}  # not UTF-8: shown as k\xff.jpg, which names no file
    modes = ["RGB", "L", "RGBA", "LA", "P", "CMYK", "I;16", "1", None]
    names = [
        "a.jpg",
        "b.JPEG",
        "c.png",
        "d.webp",
        "e.Png",
        "f.gif",
        "g.bmp",
        "h.tif",
        "i",
        "j.jpg.txt",
        "k.jpg",
    ]
    grid = list(itertools.product(sizes, modes, names))
    frame = pl.DataFrame(
        {
            "width": [w for (w, _), _, _ in grid],
            "height": [h for (_, h), _, _ in grid],
            "mode": [m for _, m, _ in grid],
            "path": [f"cls/{n}" for _, _, n in grid],
            "raw_path": [b"cls/" + raw.get(n, n.encode()) for _, _, n in grid],
        },
        schema={
            "width": pl.Int64,
            "height": pl.Int64,
            "mode": pl.String,
            "path": pl.String,
            "raw_path": pl.Binary,
        },
    )
    got = frame.select(shown_as_source())[:, 0].to_list()
    want = [
        (w, h) == (64, 64)
        and m in ("RGB", "L")
        and n.lower().endswith((".jpg", ".jpeg", ".png", ".webp"))
        and n not in raw
        for (w, h), m, n in grid
    ]
    assert got == want and sum(want) == 2 * 5


def _listed_images(pages: dict) -> dict[str, str | None]:
    """Every image shown on the pages, by path, with its thumbnail cell."""
    shown = {}
    for key, rows in pages.items():
        view = key.split("/")[1]
        for r in rows:
            sides = ((r[1], r[4]), (r[3], r[5])) if view == "x" else ((r[1], r[3]), (r[2], r[4]))
            shown.update((path, cell) for path, cell in sides if path)
    return shown


def test_source_files_holding_the_decisions_pixels_need_no_thumbnail(review, tmp_path):
    """By default an image whose source file is already its 64x64 RGB pixels (every image
    of this set) is shown from that file: no thumbnail is made, and a page made with
    thumbnails before has them removed; with no source folder known, thumbnails are made."""
    layout = OutputLayout(tmp_path / "out")
    shutil.copytree(review["layout"].root, layout.root, ignore=shutil.ignore_patterns(".dagster"))
    before = {p.stem for p in layout.review_thumbs.glob("*/*.png")}
    assert len(before) == review["first"].thumbnails_written > 0
    page = write_review_page(layout, THRESHOLDS, source_root=review["source"], page_size=PAGE_SIZE)
    data, pages = read_pages(layout)
    shown = _listed_images(pages)
    assert set(shown.values()) == {AS_SOURCE}
    assert page.shown_as_source == len(shown) > 0 and page.thumbnails_written == 0
    assert page.thumbnails_removed == len(before)
    assert not list(layout.review_thumbs.glob("*/*.png")) and page.thumbnails_left_out == 0
    assert data["source"] == review["source"].resolve().as_uri()
    # The same rows as with thumbnails, in the same order.
    assert {k: [r[:3] for r in v] for k, v in pages.items()} == {
        k: [r[:3] for r in v] for k, v in review["pages"].items()
    }
    # No source folder to show them from: a thumbnail for every image again.
    again = write_review_page(layout, THRESHOLDS, page_size=PAGE_SIZE)
    assert again.shown_as_source == 0 and again.thumbnails_written == len(before)


def _mixed_source(root: Path) -> dict[str, bool]:
    """Classes of 64x64 RGB PNGs, 64x64 grey JPEGs, 80x80 JPEGs and 64x64 RGBA PNGs, each
    with an exact copy (removed at any threshold); whether each kind is shown as source."""
    kinds = {
        "rgb64": ("png", "RGB", 64, True),
        "grey64": ("jpg", "L", 64, True),
        "rgb80": ("jpg", "RGB", 80, False),
        "rgba64": ("png", "RGBA", 64, False),
    }
    for k, (suffix, mode, side, _) in enumerate(kinds.values()):
        folder = root / list(kinds)[k]
        folder.mkdir(parents=True)
        for i in range(6):
            picture = _picture(100 * k + i).resize((side, side)).convert(mode)
            picture.save(folder / f"img_{i}.{suffix}")
        shutil.copyfile(folder / f"img_0.{suffix}", folder / f"copy of img_0.{suffix}")
    return {name: as_source for name, (*_, as_source) in kinds.items()}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A real run over four kinds of files (`_mixed_source`), and its pages."""
    import dagster as dg

    from dedup_assets.config import PipelineConfig
    from dedup_assets.runner import run_pipeline

    base = tmp_path_factory.mktemp("mixed")
    source, output = base / "source", base / "out"
    kinds = _mixed_source(source)
    config = PipelineConfig.build(
        source=str(source),
        output=str(output),
        thresholds=("0.95",),
        device="cpu",
        precision="fp32",
        method={"epochs": 1, "batch_size": 8, "n_components": 4},
    )
    outcome = run_pipeline(config, dg.DagsterInstance.ephemeral(), log=lambda _: None)
    assert not outcome.failures, outcome.failures
    layout = OutputLayout(output)
    data, pages = read_pages(layout)
    return {"source": source, "layout": layout, "kinds": kinds, "pages": pages}


def test_a_run_shows_qualifying_source_files_and_makes_thumbnails_for_the_rest(mixed):
    """The 64x64 RGB and grey files are shown from their source files, the 80x80 and the
    RGBA ones from thumbnails of their decoded pixels, one file each."""
    shown = _listed_images(mixed["pages"])
    for name, as_source in mixed["kinds"].items():
        cells = [cell for path, cell in shown.items() if path.startswith(f"{name}/")]
        assert len(cells) >= 2, (name, shown)  # the copy beside the image it duplicates
        assert all((cell == AS_SOURCE) is as_source and cell for cell in cells), (name, cells)
    thumbs = {p.stem for p in mixed["layout"].review_thumbs.glob("*/*.png")}
    assert thumbs and thumbs == {c for c in shown.values() if c != AS_SOURCE}


def test_source_files_shown_as_thumbnails_are_the_files_in_chromium(mixed, tmp_path):
    """In Chromium, an image shown as source is an <img class="thumb"> of its own source
    file (file://, existing), the others <img> of their thumbnail files."""
    from urllib.parse import unquote, urlparse

    layout, source = mixed["layout"], mixed["source"].resolve()
    text = dump_dom(layout.review_index.resolve().as_uri() + "#t=0&v=all&p=0", tmp_path / "p")
    dom = _Dom(text)
    _assert_inert(dom)
    images = [a for tag, a in dom.elements if tag == "img" and "thumb" in a.get("class", "")]
    from_source = set()
    for a in images:
        if a["src"].startswith("file:"):
            assert a["class"] == "thumb"  # not the "original" of an image beyond the cap
            path = Path(unquote(urlparse(a["src"]).path))
            assert path.is_file()
            from_source.add(path.relative_to(source).as_posix())
    from_thumbs = {a["alt"] for a in images if a["src"].startswith("thumbs/")}
    shown = _listed_images(mixed["pages"])
    assert from_source and from_thumbs
    assert all(shown[p] == AS_SOURCE for p in from_source)
    assert all(shown[p] != AS_SOURCE for p in from_thumbs)


def test_a_source_file_that_is_gone_shows_as_a_box_saying_so_in_chromium(mixed, tmp_path):
    """The page opened where its source folder is not (another machine, the source moved):
    each image drawn from a source file becomes a box saying the file was not found, with
    its path, instead of a broken image; images with thumbnails still show them."""
    layout = OutputLayout(tmp_path / "out")
    shutil.copytree(mixed["layout"].root, layout.root, ignore=shutil.ignore_patterns(".dagster"))
    gone = tmp_path / "moved away"
    write_review_page(layout, ("0.95",), source_root=gone)
    data, pages = read_pages(layout)
    shown = _listed_images(pages)
    text = dump_dom(layout.review_index.resolve().as_uri() + "#t=0&v=all&p=0", tmp_path / "p")
    dom = _Dom(text)
    _assert_inert(dom)
    boxes = [a for tag, a in dom.elements if tag == "div" and a.get("class") == "thumb missing"]
    on_page = [p for p in shown if p in "".join(dom.text)]
    expected = {p for p in on_page if shown[p] == AS_SOURCE}
    assert expected and len(boxes) >= len(expected)
    prefix = "not found: " + data["source"] + "/"
    assert {b["title"].removeprefix(prefix) for b in boxes} >= expected
    assert "source file not found" in "".join(dom.text)
    images = [a for tag, a in dom.elements if tag == "img" and "thumb" in a.get("class", "")]
    assert not [a for a in images if a["src"].startswith("file:")]  # every one replaced
    assert [a for a in images if a["src"].startswith("thumbs/")]  # thumbnails still shown


def test_shown_thumbnails_take_the_earliest_page_of_each_image():
    # Removed pairs: ranked within their class; a cross-class list: by row.
    pairs = pl.DataFrame(
        {
            "cls": [0, 0, 0, 1, 1],
            "thumb": ["a", "b", "c", "d", "e"],
            "kept_thumb": ["k", "k", "f", None, "g"],
        }
    )
    cross = pl.DataFrame({"thumb_a": ["c", "h"], "thumb_b": ["i", "j"]})
    every, left = shown_thumbnails([pairs, cross], page_size=1, limit=100)
    assert every == set("abcdefghijk") and left == 0
    # Page 0: a, k (class 0), d (class 1), c and i (cross row 0): five images.
    first, left = shown_thumbnails([pairs, cross], page_size=1, limit=5)
    assert first == {"a", "k", "d", "c", "i"} and left == 6
    assert shown_thumbnails([pairs], page_size=2, limit=0) == (set(), 8)
    assert shown_thumbnails([], page_size=2, limit=3) == (set(), 0)


def test_names_never_reach_the_html_as_markup(review):
    layout = review["layout"]
    texts = [layout.review_index.read_text()] + [
        p.read_text() for p in layout.review_pages.rglob("*.js")
    ]
    for text in texts:
        for raw in ("<img src=x", "<script>alert", "<svg"):
            assert raw not in text
    data_block = re.search(r'id="review-data">(.*?)</script>', texts[0], re.S).group(1)
    assert "<" not in data_block and ">" not in data_block and "&" not in data_block
    assert script_json("</script><!--&\u2028") == '"\\u003c/script\\u003e\\u003c!--\\u0026\\u2028"'
    assert json.loads(script_json([SCRIPT_NAME, HOSTILE_CLASS])) == [SCRIPT_NAME, HOSTILE_CLASS]
    # The old builds' page folders are gone; the page shows only the current one.
    assert [p.name for p in layout.review_pages.iterdir()] == [review["second"].build]


def test_a_missing_keep_list_is_shown_as_missing(review, tmp_path):
    layout = OutputLayout(tmp_path / "out")
    shutil.copytree(review["layout"].catalog_dir, layout.catalog_dir)
    (layout.root / "keep_lists").mkdir()
    shutil.copyfile(review["layout"].keep_list("0.9"), layout.keep_list("0.9"))
    page = write_review_page(layout, ["0.9", "0.95"], page_size=50)
    assert page.missing == ["0.95"] and page.pairs["0.9"] > 0 and page.cross_pairs["0.9"] == 0
    data, _ = read_pages(layout)
    assert data["thresholds"][1] == {"key": "0.95", "kind": "cosine", "missing": True}
    assert data["thresholds"][0]["cross"] is None  # not computed, not "none"
    assert "did not finish" in layout.review_index.read_text()


def test_the_asset_writes_the_page_and_links_it(review):
    import dagster as dg

    from dedup_assets.assets.review import build_review_asset
    from dedup_assets.definitions import build_definitions
    from dedup_assets.partitions import threshold_partitions

    config = review["config"]
    defs = build_definitions(config)
    asset = build_review_asset(
        threshold_partitions(config.thresholds),
        defs.resolve_assets_def("keep_list"),
        defs.resolve_assets_def("cross_class_duplicates"),
    )
    result = dg.materialize(
        [asset], resources=config.resources(), instance=review["instance"], raise_on_error=True
    )
    metadata = result.asset_materializations_for_node("review_page")[0].metadata
    index = review["layout"].review_index.resolve()
    assert metadata["review_page"].value == index.as_uri()
    assert metadata["removed_listed"].value == sum(review["second"].pairs.values())
    assert metadata["thumbnails_written"].value == 0
    # Back to the small pages the other tests read.
    again = write_review_page(
        review["layout"], THRESHOLDS, source_root=review["source"], page_size=PAGE_SIZE, **THUMBS
    )
    assert again.build == review["second"].build


# ---------------------------------------------------------------------------- in a browser


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (and loaded their page data)."""
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium found (chromium, chromium-browser or google-chrome)")
    done = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


class _Dom(HTMLParser):
    """Every element with its attributes, and the text, of a dumped DOM."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _assert_inert(dom: _Dom) -> None:
    """No element or handler came from a name, and no injected script ran."""
    for tag, attrs in dom.elements:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        assert not (tag == "img" and attrs.get("src") == "x"), attrs
        assert tag != "svg"
    scripts = [attrs for tag, attrs in dom.elements if tag == "script"]
    assert all(s.get("src", "pages/").startswith("pages/") for s in scripts), scripts
    assert sum("src" not in s for s in scripts) == 2  # the data block and the app


def test_hostile_names_render_as_text_in_chromium(review, tmp_path):
    """The pages showing each hostile name, opened in headless Chromium: the names are in
    the DOM as text (serialized escaped), no element or handler came from them, no injected
    script ran (the class's payload would set the title)."""
    data, pages = review["data"], review["pages"]
    index = review["layout"].review_index.resolve().as_uri()
    hostile_class = f"c{data['classes'].index(HOSTILE_CLASS)}"
    for target, views in (
        (SCRIPT_PATH, ("all",)),
        (IMG_PATH, ("all",)),
        (f"{HOSTILE_CLASS}/own_0 again.png", (hostile_class,)),
        (f"{HOSTILE_CLASS}/from desert.png", ("x",)),
    ):
        text = dump_dom(index + locate(data, pages, target, views), tmp_path / "profile")
        assert f"<title>{TITLE}</title>" in text
        dom = _Dom(text)
        _assert_inert(dom)
        visible = "".join(dom.text)
        assert target in visible and HOSTILE_CLASS in visible  # the class filter names it
        assert html.escape(target, quote=False) in text  # serialized as text, not markup


def test_images_beyond_the_thumbnails_show_their_source_files_in_chromium(review, tmp_path):
    """With no thumbnail made (a cap of 0), every image on a page is an <img> of its own
    source file: a file:// URL of the source with each path segment encoded, one that
    exists on disk, hostile names included, and nothing of a name became markup."""
    from urllib.parse import unquote, urlparse

    layout = OutputLayout(tmp_path / "out")
    shutil.copytree(review["layout"].root, layout.root, ignore=shutil.ignore_patterns(".dagster"))
    shutil.rmtree(layout.review_dir)
    write_review_page(
        layout,
        THRESHOLDS,
        source_root=review["source"],
        page_size=PAGE_SIZE,
        max_thumbnails=0,
        **THUMBS,
    )
    data, pages = read_pages(layout)
    index = layout.review_index.resolve().as_uri()
    text = dump_dom(index + locate(data, pages, SCRIPT_PATH), tmp_path / "profile")
    dom = _Dom(text)
    _assert_inert(dom)
    shown = [a for tag, a in dom.elements if tag == "img" and "original" in a.get("class", "")]
    assert len(shown) >= 2 and not any(a.get("src", "").startswith("thumbs") for a in shown)
    source = review["source"].resolve()
    for attrs in shown:
        url = urlparse(attrs["src"])
        assert url.scheme == "file" and "<" not in attrs["src"]
        path = Path(unquote(url.path))
        assert path.is_file() and path.is_relative_to(source), attrs["src"]
    assert SCRIPT_PATH in {
        Path(unquote(urlparse(a["src"]).path)).relative_to(source).as_posix() for a in shown
    }


def test_the_honoured_overrides_start_the_marks_and_stay_text(review, tmp_path):
    """A page written with the run's overrides (hostile names among them), in a copy of the
    output, opened in a browser that never saw a mark: the counter holds them, the header
    and the status name the file, and nothing in them became markup."""
    from dedup_assets.core.decision.overrides import read_overrides

    copy = OutputLayout(tmp_path / "out")
    shutil.copytree(review["layout"].root, copy.root, ignore=shutil.ignore_patterns(".dagster"))
    shutil.rmtree(copy.review_dir)
    rows = [(SCRIPT_PATH, "remove", ""), (IMG_PATH, "keep", "")]
    with copy.overrides.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("path", "decision", "other"), *rows])
    overrides = read_overrides(copy.overrides, review["source"])
    write_review_page(
        copy, THRESHOLDS, source_root=review["source"], page_size=PAGE_SIZE, overrides=overrides
    )
    text = dump_dom(copy.review_index.resolve().as_uri(), tmp_path / "profile")
    dom = _Dom(text)
    _assert_inert(dom)
    assert re.search(r'<span id="counter"[^>]*>2 marks</span>', text), text[-3000:]
    visible = "".join(dom.text)
    assert f"2 corrections honoured from {copy.overrides}" in visible
    assert f"added 2 of the 2 corrections in {copy.overrides}" in visible


def test_the_page_builds_and_reads_overrides_csv(review, tmp_path):
    """#selftest: the page's own CSV writer and reader on awkward paths; the CSV it writes
    is what Python's csv module reads back."""
    text = dump_dom(review["layout"].review_index.resolve().as_uri() + "#selftest", tmp_path)
    found = re.search(r'<pre id="selftest">(.*?)</pre>', text, re.S)
    assert found, text[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    rows = list(csv.reader(io.StringIO(result["csv"], newline="")))
    assert rows == [
        ["path", "decision", "other"],
        [" cls/space .png", "keep", ""],
        ['cls/"q".png', "remove", ""],
        ["cls/a, b.png", "keep", ""],
        ["cls/new\nline.png", "remove", ""],
        ['cls/"><script>alert(1)</script>.png', "not_duplicate", "cls/k.png"],
    ]
    assert result["roundtrip"] and result["added"] == 5 and result["errors"] == []
    assert [e.split(":")[0] for e in result["badErrors"]] == ["row 2", "row 3", "row 4"]
    assert result["thresholds"] == list(THRESHOLDS) and result["firstRows"] == PAGE_SIZE


def test_a_reviewer_marks_pages_and_downloads_overrides(review, tmp_path):
    """In Chromium driven by Playwright: mark a pair "not a duplicate" and keep a removed
    image, page away and back, reload, load an existing overrides.csv, mark a cross-class
    pair "not a duplicate", download: the file holds exactly those marks; no dialog ever
    opened."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium found (chromium, chromium-browser or google-chrome)")
    data, pages = review["data"], review["pages"]
    url = review["layout"].review_index.resolve().as_uri()
    first = pages["0/all/0"]
    existing = tmp_path / "existing.csv"
    existing.write_text(f"path,decision,other\n{IMG_PATH},remove,\n", encoding="utf-8")
    dialogs = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        # Without the page's Content-Security-Policy (Playwright evaluates its waits as
        # strings, which it forbids): the escaping alone keeps the names inert here.
        page = browser.new_page(accept_downloads=True, bypass_csp=True)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url + "#t=0&v=all&p=0")
        cards = page.locator("article.pair")
        assert cards.count() == PAGE_SIZE
        cards.nth(0).get_by_role("button", name="not a duplicate").click()
        cards.nth(1).locator(".side").nth(1).get_by_role("button", name="keep this").click()
        assert page.locator("#counter").inner_text() == "2 marks"
        page.locator("#next").click()
        page.wait_for_function("location.hash === '#t=0&v=all&p=1'")
        page.locator("#prev").click()
        page.wait_for_function("location.hash === '#t=0&v=all&p=0'")
        page.reload()
        cards = page.locator("article.pair")
        pressed = cards.nth(0).get_by_role("button", name="not a duplicate")
        assert pressed.get_attribute("aria-pressed") == "true"
        assert "marked" in (cards.nth(1).get_attribute("class") or "")
        page.locator("#load").set_input_files(str(existing))
        page.wait_for_function("document.getElementById('counter').textContent === '3 marks'")
        assert "loaded 1 marks" in page.locator("#status").inner_text()
        page.goto(url + locate(data, pages, IMG_PATH))
        card = page.locator("article.pair", has_text=IMG_PATH)
        sync_api.expect(card).to_contain_text("your mark: remove")  # loaded from a page file
        page.goto(url + "#t=0&v=x&p=0")
        cross = pages["0/x/0"][0]
        first_cross = page.locator("article.pair").nth(0)
        sync_api.expect(first_cross).to_contain_text(cross[1])
        first_cross.get_by_role("button", name="not a duplicate").click()
        sync_api.expect(page.locator("#counter")).to_have_text("4 marks")
        pressed = first_cross.get_by_role("button", name="not a duplicate")
        assert pressed.get_attribute("aria-pressed") == "true"
        with page.expect_download() as download:
            page.locator("#download").click()
        saved = tmp_path / "overrides.csv"
        download.value.save_as(saved)
        browser.close()
    assert dialogs == []
    with saved.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "decision", "other"]
    assert sorted(rows[1:]) == sorted(
        [
            [first[0][1], "not_duplicate", first[0][2]],
            [first[1][1], "keep", ""],
            [IMG_PATH, "remove", ""],
            [cross[1], "not_duplicate", cross[3]],
        ]
    )
