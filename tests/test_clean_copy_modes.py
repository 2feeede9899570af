"""The clean copy never shares a file with the source (issue 21, point 2).

A copy mode clean copy holds files of its own after any sequence of runs and modes: the
mode is part of what a copy is made from (a mode change rebuilds it), and no file of a
hardlink or symlink mode copy, nor one with the source's inode, is reused as a donor. The
property runs every ordered sequence of two and three runs through the functions the asset
and the runner call; the headline sequence goes through the real `dedup run`.
"""

import hashlib
import itertools
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import run_dedup, tree_digest
from PIL import Image

from dedup_assets.assets.clean_dataset import FILES_NAME, link_warning, write_clean_copy
from dedup_assets.core.data.artifacts import clean_copy_is_current
from dedup_assets.core.data.layout import OutputLayout

MODES = ("copy", "hardlink", "symlink")
THRESHOLDS = ["0.93", "0.97"]
SEQUENCES = [s for n in (2, 3) for s in itertools.product(MODES, repeat=n)]


def _source(root: Path, classes: int = 3, per_class: int = 8) -> list[bytes]:
    """A few small files in `classes` class folders, and in each a relative symlink to one
    of them (a kept symlink must reach its file from the clean copy in every mode); their
    paths relative to root."""
    rng = np.random.default_rng(0)
    rels = []
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            rel = f"class{c}/img {i:02d}.png"
            (root / rel).write_bytes(rng.bytes(int(rng.integers(10, 400))))
            rels.append(os.fsencode(rel))
        (root / f"class{c}" / "link.png").symlink_to("img 00.png")
        rels.append(os.fsencode(f"class{c}/link.png"))
    return rels


def _kept(root: Path, rels: list[bytes]) -> pl.DataFrame:
    """The kept files as the asset hands them over (with the catalog's size and time, by
    which a copy mode copy moves its unchanged folders into the next)."""
    stats = [os.stat(root / os.fsdecode(r)) for r in rels]
    return pl.DataFrame(
        {
            "raw_path": rels,
            "content_hash": [
                hashlib.sha1((root / os.fsdecode(r)).read_bytes()).hexdigest()[:16] for r in rels
            ],
            "size_bytes": [st.st_size for st in stats],
            "mtime_ns": [st.st_mtime_ns for st in stats],
        },
        schema={
            "raw_path": pl.Binary,
            "content_hash": pl.String,
            "size_bytes": pl.Int64,
            "mtime_ns": pl.Int64,
        },
    )


def _clean_files(folder: Path) -> list[Path]:
    meta = {FILES_NAME, ".latent-dedup-clean.json"}
    return [p for p in folder.rglob("*") if p.name not in meta and not p.is_dir()]


def _check(layout: OutputLayout, source: Path, t: str, mode: str) -> None:
    """clean/<t> is a complete copy in `mode`: own files, hard links or symlinks."""
    made = json.loads(layout.clean_manifest(t).read_text())
    assert made["mode"] == mode, f"T={t} still {made['mode']} after a {mode} run"
    files = _clean_files(layout.clean_dir(t))
    assert len(files) == made["images"] > 0
    for p in files:
        src = source / p.relative_to(layout.clean_dir(t))
        a, b = os.lstat(p), os.stat(src)
        assert p.read_bytes() == src.read_bytes()
        if mode == "copy":
            assert not p.is_symlink() and (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino), p
        elif mode == "hardlink":
            assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino), p
        else:
            assert p.is_symlink() and os.path.samefile(p, src), p


@pytest.mark.parametrize("modes", SEQUENCES, ids="-".join)
def test_every_order_of_modes_leaves_a_copy_of_its_own(tmp_path, modes):
    source = tmp_path / "src"
    rels = _source(source)
    before = tree_digest(source)
    layout = OutputLayout(tmp_path / "out")
    for run, mode in enumerate(modes):
        # One run as the runner drives it: a threshold whose copy is not current (another
        # keep list, another mode) is rebuilt. T=0.97's keep list changes every run, so
        # its copy is rebuilt in the same mode too, from its own and T=0.93's files.
        keeps = {"0.93": rels, "0.97": [r for k, r in enumerate(rels) if k % 5 != run]}
        for t in THRESHOLDS:
            keep_digest = f"{t}-run{run if t == '0.97' else 0}"
            if not clean_copy_is_current(layout, t, keep_digest, mode):
                write_clean_copy(
                    layout,
                    t,
                    THRESHOLDS,
                    _kept(source, keeps[t]),
                    os.fsencode(source),
                    mode,
                    keep_digest,
                    f"run{run}",
                )
            assert clean_copy_is_current(layout, t, keep_digest, mode)
        for t in THRESHOLDS:
            _check(layout, source, t, mode)
        assert tree_digest(source) == before
    if modes[-1] == "copy":  # the user trains on it, and writes into it: never the source
        for t in THRESHOLDS:
            for p in _clean_files(layout.clean_dir(t)):
                with open(p, "r+b") as fh:
                    fh.write(b"edited")
        assert tree_digest(source) == before


@pytest.mark.parametrize("legacy", ["hardlink", "symlink"])
def test_a_copy_mode_copy_holding_links_is_never_a_donor(tmp_path, legacy):
    """Before the mode was part of a copy's inputs, a copy run after a hardlink run kept
    (and re-linked) the source's own files under a manifest that says `copy`."""
    source = tmp_path / "src"
    rels = _source(source, classes=2, per_class=5)
    layout = OutputLayout(tmp_path / "out")
    kept, root = _kept(source, rels), os.fsencode(source)
    write_clean_copy(layout, "0.93", THRESHOLDS, kept, root, legacy, "k1", "old")
    manifest = layout.clean_manifest("0.93")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "mode": "copy"}))
    # Another threshold, then the same one (a newer keep list): both from the linked copy.
    assert write_clean_copy(layout, "0.97", THRESHOLDS, kept, root, "copy", "k1", "r") == 0
    assert write_clean_copy(layout, "0.93", THRESHOLDS, kept, root, "copy", "k2", "r") == len(rels)
    for t in THRESHOLDS:
        _check(layout, source, t, "copy")


# ------------------------------------------------------------------ through the real command


def _pngs(root: Path) -> None:
    """Three classes of twelve smooth 32x32 images and one exact copy each."""
    rng = np.random.default_rng(7)
    for cls in ("forest", "river", "sea"):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            cells = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(cells).resize((32, 32), Image.BILINEAR).save(root / cls / f"{i}.png")
        (root / cls / "copy.png").write_bytes((root / cls / "0.png").read_bytes())


def test_hardlink_run_then_copy_run_leaves_the_source_untouched(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    _pngs(source)
    before = tree_digest(source)
    run = ("run", "--source", str(source), "--output", str(out), "--epochs", "1")
    run += ("--device", "cpu", "--precision", "fp32", "--thresholds", ",".join(THRESHOLDS))
    layout = OutputLayout(out)

    linked = run_dedup(*run, "--clean-copy-mode", "hardlink")
    assert linked.returncode == 0, linked.stdout + linked.stderr
    assert "NOTE  clean copies are hard links to the source" in linked.stdout
    assert "editing a file in clean/<T> edits the source" in linked.stdout
    for t in THRESHOLDS:
        _check(layout, source, t, "hardlink")
    again = run_dedup(*run, "--clean-copy-mode", "hardlink")
    assert "nothing changed: every output" in again.stdout
    assert "NOTE  clean copies are hard links to the source" in again.stdout

    copied = run_dedup(*run)  # the default mode: copy
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert "nothing changed: every output" not in copied.stdout  # the mode changed
    assert "NOTE" not in copied.stdout
    for t in THRESHOLDS:
        _check(layout, source, t, "copy")
    for t in THRESHOLDS:  # (thresholds share files: an in-place edit reaches both)
        for p in _clean_files(layout.clean_dir(t)):
            with open(p, "r+b") as fh:
                fh.write(b"edited")
    assert tree_digest(source) == before

    helped = run_dedup("run", "--help")
    assert "symlink (the source's own files: editing a file in clean/<T> edits the source)" in (
        " ".join(helped.stdout.split())
    )


def test_only_the_linking_modes_warn():
    assert link_warning("copy") is None
    for mode, links in (("hardlink", "hard links"), ("symlink", "symbolic links")):
        line = link_warning(mode)
        assert f"{links} to the source" in line and "edits the source" in line


def test_force_and_verify_remake_a_clean_copy_damaged_since_it_was_made(tmp_path):
    """A file deleted from clean/<T>, another rewritten there, one added: `--force` and
    `--verify` look at the copy's files and make it again (they said "nothing changed",
    and the last screen counted a file that was gone); the default rerun reads only the
    copy's manifest, as documented."""
    source, out = tmp_path / "src", tmp_path / "out"
    _pngs(source)
    run = ("run", "--source", str(source), "--output", str(out), "--epochs", "1")
    run += ("--device", "cpu", "--precision", "fp32", "--thresholds", "0.95")
    first = run_dedup(*run)
    assert first.returncode == 0, first.stdout + first.stderr
    clean = OutputLayout(out).clean_dir("0.95")
    made = {p: p.read_bytes() for p in _clean_files(clean)}
    assert len(made) > 2
    first_, second, third = sorted(made)[:3]
    first_.unlink()  # deleted
    second.write_bytes(b"edited")  # rewritten
    (third.parent / "stray.png").write_bytes(b"not ours")  # added
    plain = run_dedup(*run)
    assert "nothing changed" in plain.stdout, plain.stdout  # the manifest alone: as it says
    again = run_dedup(*run, "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "clean copy T=0.95: its files changed since it was made" in again.stdout
    assert {p: p.read_bytes() for p in _clean_files(clean)} == made
    quiet = run_dedup(*run, "--force")
    assert "nothing changed: every output" in quiet.stdout, quiet.stdout
    second.write_bytes(b"edited again")
    verified = run_dedup(*run, "--verify")
    assert "clean copy T=0.95: its files changed since it was made" in verified.stdout
    assert {p: p.read_bytes() for p in _clean_files(clean)} == made
