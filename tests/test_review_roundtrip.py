"""From the review page to a changed clean copy, as a user goes (issue 24's "done when").

A small `dedup demo` run (the demo source made beforehand: three classes of 8 originals and
their planted copies, so the run is short); its `review/index.html` opened from `file://` in
Chromium (Playwright), with the page's own Content-Security-Policy in force; a removed pair
marked "not a duplicate" and another removed image flipped to "keep this" by clicking; the
overrides downloaded through the page's button and saved as `<output>/overrides.csv`; the
same `dedup demo` command again. The second run changes exactly those decisions: at every
threshold each row's kept, duplicate_of and match are as before except the two images now
kept, the three images the file names say `decided_by = override`, the class no mark touched
is not decided again (its keep lists byte-identical), the clean copy gains exactly the two
images, nothing is retrained, and the new review page no longer lists them.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from conftest import run_dedup

from dedup_assets.core.data.artifacts import catalog_class_keys, read_keep_list
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality.demo_data import generate_demo_dataset

THRESHOLDS = ("0.95", "1%")  # a cosine (the page's first threshold) and a budget
OPTIONS = (
    "--thresholds",
    ",".join(THRESHOLDS),
    "--epochs",
    "1",
    "--components",
    "8",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--executor",
    "in_process",
)
KEPT_CLASSES = ("farmland", "forest", "water")  # the other demo classes are removed: faster


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _rows(layout: OutputLayout, t: str) -> dict[str, dict]:
    return {r["path"]: r for r in read_keep_list(layout.keep_list(t)).iter_rows(named=True)}


def _files(root: Path) -> dict[str, str]:
    """Every file below root (hidden ones aside): its relative path and content digest."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def _class_keep_files(layout: OutputLayout) -> dict[tuple[str, str], bytes]:
    return {
        (t, k): layout.class_keep_list(t, k).read_bytes()
        for t in THRESHOLDS
        for k in catalog_class_keys(layout)
    }


def _choose(rows: dict[str, dict]) -> tuple[str, str, str]:
    """(x, y, w) at the page's first threshold: x removed as a near-duplicate of y, which no
    other image names (so the pair is x's only reason to go); w removed as a near-duplicate
    in another class (its pair left unmarked)."""
    by_id = {r["image_id"]: r for r in rows.values()}
    named = Counter(r["duplicate_of"] for r in rows.values() if not r["kept"])
    near = sorted(
        (r for r in rows.values() if not r["kept"] and r["match"] == "near"),
        key=lambda r: r["path"],
    )
    x = next(r for r in near if named[r["duplicate_of"]] == 1)
    w = next(r for r in near if r["class"] != x["class"])
    return x["path"], by_id[x["duplicate_of"]]["path"], w["path"]


def _page_pairs(page) -> list[tuple[str, str]]:
    """(kept, removed) paths of every card the page shows."""
    cards = page.locator("article.pair")
    return [tuple(cards.nth(i).locator(".path").all_inner_texts()) for i in range(cards.count())]


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium found (chromium, chromium-browser or google-chrome)")
    base = tmp_path_factory.mktemp("review_roundtrip")
    out = base / "out"
    layout = OutputLayout(out)
    layout.claim()
    source = layout.demo_dataset
    generate_demo_dataset(source, seed=3, per_class=8, duplicate_fraction=0.25)
    for gone in sorted(p for p in source.iterdir() if p.is_dir()):
        if gone.name not in KEPT_CLASSES:
            shutil.rmtree(gone)
    first = run_dedup("demo", "--output", str(out), *OPTIONS)
    assert first.returncode == 0, first.stdout + first.stderr
    before = {t: _rows(layout, t) for t in THRESHOLDS}
    before_files = _class_keep_files(layout)
    before_clean = {t: _files(layout.clean_dir(t)) for t in THRESHOLDS}
    model = layout.model.stat().st_mtime_ns, layout.model.read_bytes()
    x, y, w = _choose(before[THRESHOLDS[0]])

    url = layout.review_index.resolve().as_uri()
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(accept_downloads=True)  # the page's own CSP in force
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
        page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
        page.goto(url + "#t=0&v=all&p=0")
        removed = sum(not r["kept"] for r in before[THRESHOLDS[0]].values())
        sync_api.expect(page.locator("article.pair")).to_have_count(removed)
        shown_before = _page_pairs(page)
        cards = page.locator("article.pair")
        x_card = cards.nth(shown_before.index((y, x)))
        w_card = cards.nth([removed for _, removed in shown_before].index(w))
        x_card.get_by_role("button", name="not a duplicate").click()
        w_card.locator(".side").nth(1).get_by_role("button", name="keep this").click()
        sync_api.expect(page.locator("#counter")).to_have_text("2 marks")
        with page.expect_download() as download:
            page.locator("#download").click()
        saved = base / "downloaded.csv"
        download.value.save_as(saved)
        suggested = download.value.suggested_filename
        shutil.copyfile(saved, layout.overrides)  # where the page tells the user to put it

        second = run_dedup("demo", "--output", str(out), *OPTIONS)
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
        # The page the second run wrote, in a browser context that never saw the marks (as
        # another browser, or a colleague, would open it): it starts from the honoured file.
        again = browser.new_page(accept_downloads=True)
        again.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        again.goto(url + "#t=0&v=all&p=0")
        sync_api.expect(again.locator("article.pair")).to_have_count(removed - 2)
        shown_after = _page_pairs(again)
        sync_api.expect(again.locator("#counter")).to_have_text("2 marks")
        status = again.locator("#status").inner_text()
        with again.expect_download() as download_again:
            again.locator("#download").click()
        saved_again = base / "downloaded_again.csv"
        download_again.value.save_as(saved_again)
        browser.close()
    return {
        "layout": layout,
        "source": source,
        "chosen": (x, y, w),
        "before": before,
        "before_files": before_files,
        "before_clean": before_clean,
        "model": model,
        "errors": errors,
        "saved": saved,
        "suggested": suggested,
        "second": second,
        "shown_before": shown_before,
        "shown_after": shown_after,
        "status_again": status,
        "saved_again": saved_again,
    }


def test_the_page_downloads_the_marks_as_overrides_csv(roundtrip):
    """The file the button downloads holds exactly the two marks, paths relative to the
    source; the page raised no error, CSP violation or dialog on the way."""
    x, y, w = roundtrip["chosen"]
    assert roundtrip["errors"] == []
    assert roundtrip["suggested"] == "overrides.csv"
    with roundtrip["saved"].open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["path", "decision", "other"], [w, "keep", ""], [x, "not_duplicate", y]]
    for path in (x, y, w):
        assert not Path(path).is_absolute() and (roundtrip["source"] / path).is_file(), path


def test_the_rerun_changes_exactly_the_marked_decisions(roundtrip):
    """At every threshold: x and w kept where they were removed, the three named images
    `decided_by = override`, every other row as before (kept, duplicate_of, match, who)."""
    second, layout = roundtrip["second"], roundtrip["layout"]
    assert second.returncode == 0, second.stdout + second.stderr
    x, y, w = roundtrip["chosen"]
    first_t = THRESHOLDS[0]
    assert not roundtrip["before"][first_t][x]["kept"]
    assert not roundtrip["before"][first_t][w]["kept"]
    fields = ("kept", "duplicate_of", "match", "decided_by")
    for t in THRESHOLDS:
        before, after = roundtrip["before"][t], _rows(layout, t)
        assert after.keys() == before.keys(), t
        expected = {p: tuple(r[f] for f in fields) for p, r in before.items()}
        for path in (x, w):
            expected[path] = (True, None, None, "override")
        expected[y] = (*expected[y][:3], "override")
        got = {p: tuple(r[f] for f in fields) for p, r in after.items()}
        changed = {p: (expected[p], got[p]) for p in got if got[p] != expected[p]}
        assert changed == {}, (t, changed)


def test_only_the_marked_classes_are_decided_again(roundtrip):
    layout = roundtrip["layout"]
    x, _, w = roundtrip["chosen"]
    marked = {x.split("/")[0], w.split("/")[0]}
    names = {
        k: read_keep_list(layout.class_keep_list(THRESHOLDS[0], k))["class"][0]
        for k in catalog_class_keys(layout)
    }
    assert set(names.values()) - marked, "every class was marked: nothing to compare"
    for (t, key), data in roundtrip["before_files"].items():
        now = layout.class_keep_list(t, key).read_bytes()
        if names[key] in marked:
            assert now != data, (t, names[key])
        else:
            assert now == data, f"class {names[key]} at T={t} was decided again"


def test_the_clean_copy_gains_exactly_the_two_kept_images(roundtrip):
    layout, source = roundtrip["layout"], roundtrip["source"]
    x, _, w = roundtrip["chosen"]
    for t in THRESHOLDS:
        before, after = roundtrip["before_clean"][t], _files(layout.clean_dir(t))
        gained = {p: after[p] for p in after.keys() - before.keys()}
        removed_before = {p for p, r in roundtrip["before"][t].items() if not r["kept"]}
        expected = {x, w} & removed_before
        assert set(gained) == expected, (t, sorted(gained))
        for path in expected:
            assert gained[path] == hashlib.sha256((source / path).read_bytes()).hexdigest()
        assert {p: after[p] for p in before} == before, t


def test_nothing_is_retrained(roundtrip):
    layout = roundtrip["layout"]
    mtime, data = roundtrip["model"]
    assert layout.model.stat().st_mtime_ns == mtime
    assert layout.model.read_bytes() == data
    assert "training: model kept" in roundtrip["second"].stdout, roundtrip["second"].stdout


def test_the_new_review_page_lists_the_marked_images_no_more(roundtrip):
    x, _, w = roundtrip["chosen"]
    before, after = roundtrip["shown_before"], roundtrip["shown_after"]
    assert sorted(after) == sorted(p for p in before if p[1] not in (x, w))
    keep = pl.read_parquet(roundtrip["layout"].keep_list(THRESHOLDS[0]))
    assert sorted(r for _, r in after) == sorted(keep.filter(~pl.col("kept"))["path"].to_list())


def test_a_fresh_browser_starts_from_the_honoured_overrides(roundtrip):
    """The page the second run wrote, opened where no marks were ever made, holds the
    corrections of overrides.csv as marks: its download is the same file, so saving it over
    overrides.csv undoes nothing."""
    layout = roundtrip["layout"]
    assert str(layout.overrides) in roundtrip["status_again"], roundtrip["status_again"]
    assert roundtrip["saved_again"].read_bytes() == roundtrip["saved"].read_bytes()
    assert "2 corrections honoured from" in layout.review_index.read_text(encoding="utf-8")
