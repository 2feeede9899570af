"""A first run's decoder (`core.data.predecode`): what a class's catalog holds when its files
come from the decoder's cache is what decoding them then gives, file by file (odd names,
broken and 16-bit files, a file rewritten after it was decoded); a class is decoded by one
process; the command starts the decoder only into an output it may write, and removes its
cache, and a run with the cache leaves the outputs of a run without it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from dedup_assets.core.data import predecode
from dedup_assets.core.data.class_catalog import update_class_catalog
from dedup_assets.core.data.layout import PREDECODE
from dedup_assets.core.data.splits import detect_splits, scan_class

SETTINGS = predecode.settings_of(256 * 2**20, False, "auto")
CATS, DOGS, ONE = "cats%20%C3%A9", "dogs%20%5Bx%5D", "one"  # the partition keys of the names


def _source(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"im {i} [é] {c}.png")
    return root


@pytest.fixture
def odd_source(tmp_path):
    root = _source(tmp_path / "src", {"cats é": 9, "dogs [x]": 7, "one": 1})
    (root / "cats é" / "broken.png").write_bytes(b"\x89PNG not really")
    sixteen = (np.arange(24 * 20).reshape(20, 24) * 97 % 65535).astype(np.uint16)
    Image.fromarray(sixteen).save(root / "dogs [x]" / "sixteen.png")
    Image.open(root / "dogs [x]" / "im 0 [é] 1.png").save(root / "dogs [x]" / "copy.png")
    return root


OTHER_SETTINGS = (  # another --max-file-bytes, --include-hidden, --splits than SETTINGS
    predecode.settings_of(1000, False, "auto"),
    predecode.settings_of(256 * 2**20, True, "auto"),
    predecode.settings_of(256 * 2**20, False, "none"),
)


def _empty_cache(tmp_path: Path, monkeypatch) -> Path:
    """A decoder's cache folder with nothing in it yet, given to this process's reads."""
    cache = tmp_path / "out" / f"{PREDECODE}1"
    cache.mkdir(parents=True)
    monkeypatch.setenv(predecode.ENV_DIR, str(cache))
    return cache


def _decode_all(source: Path, cache: Path, parts: int = 2, smallest: int = 1) -> None:
    """The decoder run whole into `cache`: with `smallest` 1 every class into its own
    cache, with MIN_CLASS_IMAGES the small classes into groups (as the command does)."""
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dedup_assets.core.data.predecode",
            str(source),
            str(cache),
            json.dumps(SETTINGS),
            str(parts),
            str(smallest),
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _catalog(source: Path, key: str, previous=None, ahead=None):
    scan = scan_class(source, detect_splits(source, "auto"), key)
    prev, pixels = previous if previous is not None else (None, None)
    return update_class_catalog(source, scan, prev, pixels, max_file_bytes=256 * 2**20, ahead=ahead)


def _same(a, b) -> None:
    assert a.table.equals(b.table)
    np.testing.assert_array_equal(np.asarray(a.pixels), np.asarray(b.pixels))
    assert a.quarantine.equals(b.quarantine)
    assert a.digest() == b.digest()


def test_a_class_read_through_the_cache_is_the_class_decoded_directly(
    odd_source, tmp_path, monkeypatch
):
    cache = tmp_path / "out" / f"{PREDECODE}1"
    _decode_all(odd_source, cache)
    monkeypatch.setenv(predecode.ENV_DIR, str(cache))
    for key in (CATS, DOGS, ONE):
        cached = predecode.cached_class(key, SETTINGS)
        assert cached is not None, key
        direct = _catalog(odd_source, key)
        through = _catalog(odd_source, key, cached)
        _same(through, direct)
        ok = int((direct.table["status"] == "ok").sum())
        sixteen = int(direct.table["mode"].is_in(["I;16", "I;16B", "I;16L", "I", "F"]).sum())
        # every readable 8-bit file taken from the cache; the broken file and the 16-bit
        # one (never reused: `update_class_catalog`) read again
        assert (
            through.reused == ok - sixteen and through.decoded == len(direct.table) - through.reused
        )
    assert (direct.table["status"] != "ok").sum() == 0  # "one": nothing broken
    predecode.discard(ONE)
    assert predecode.cached_class(ONE, SETTINGS) is None  # gone: decoded as usual


def test_a_file_rewritten_after_decoding_is_read_again(odd_source, tmp_path, monkeypatch):
    cache = tmp_path / "out" / f"{PREDECODE}1"
    _decode_all(odd_source, cache)
    path = odd_source / "cats é" / "im 3 [é] 0.png"
    Image.fromarray(np.full((30, 30, 3), 7, np.uint8)).save(path)  # other size and time
    monkeypatch.setenv(predecode.ENV_DIR, str(cache))
    through = _catalog(odd_source, CATS, predecode.cached_class(CATS, SETTINGS))
    _same(through, _catalog(odd_source, CATS))
    row = through.table.filter(pl.col("path") == "cats é/im 3 [é] 0.png")
    assert row["width"].item() == 30  # the new file's, not the one decoded before


def test_a_cache_of_other_reading_settings_or_none_is_not_used(odd_source, tmp_path, monkeypatch):
    cache = tmp_path / "out" / f"{PREDECODE}1"
    _decode_all(odd_source, cache)
    monkeypatch.setenv(predecode.ENV_DIR, str(cache))
    for other in OTHER_SETTINGS:
        assert predecode.cached_class(CATS, other) is None
    assert predecode.cached_class(CATS, SETTINGS) is not None
    monkeypatch.delenv(predecode.ENV_DIR)
    assert predecode.cached_class(CATS, SETTINGS) is None


def test_a_class_claimed_by_a_worker_is_left_to_it_and_never_waited_for(
    odd_source, tmp_path, monkeypatch
):
    cache = _empty_cache(tmp_path, monkeypatch)
    # A worker reaches "dogs [x]" first: it claims it and decodes it itself.
    assert predecode.cached_class(DOGS, SETTINGS) is None
    _decode_all(odd_source, cache)
    assert predecode.cached_class(DOGS, SETTINGS) is None  # the decoder left it
    assert predecode.cached_class(CATS, SETTINGS) is not None
    # Claimed by the decoder and not written yet: the worker does not wait for it.
    (cache / f"{predecode._entry('other')}.claim").touch()
    assert predecode.cached_class("other", SETTINGS) is None


@pytest.mark.parametrize(
    ("sizes", "parts", "order"),
    [
        ([1] * 10, 2, [4, 9, 3, 8, 2, 7, 1, 6, 0, 5]),
        ([1] * 5, 2, [2, 4, 1, 3, 0]),
        ([1] * 3, 1, [2, 1, 0]),
        ([1], 4, [0]),
        ([], 2, []),
        # above MAX_CLASS_IMAGES or past MAX_IMAGES: left to the workers
        ([150_000, 20_000, 10, 10], 2, [1, 3, 2]),
        ([20_000, 20_000, 20_000, 20_000], 2, [1, 3, 0]),
        ([20_001, 5], 1, [1]),
    ],
)
def test_the_decoder_starts_at_the_end_of_each_worker_range(sizes, parts, order):
    keys = [f"k{i}" for i in range(len(sizes))]
    assert predecode.decoding_order(keys, sizes, parts, smallest=1) == [[f"k{i}"] for i in order]


@pytest.mark.parametrize(
    ("sizes", "parts", "units"),
    [
        # under MIN_CLASS_IMAGES: together, from the range's end back, until a group holds it
        ([10, 300, 255, 256], 1, [[3], [1], [2, 0]]),
        ([100] * 6, 1, [[5, 4, 3], [2, 1, 0]]),
        ([100] * 6, 2, [[2, 1, 0], [5, 4, 3]]),
        ([20] * 30, 2, [list(range(14, 1, -1)), list(range(29, 16, -1)), [1, 0], [16, 15]]),
        ([0, 5, 0], 1, [[1]]),  # empty classes: nothing to decode
        ([1], 3, [[0]]),
        ([], 2, []),
        # the cap on images holds for groups too
        ([20_000, 20_000, 255, 255, 20_000], 1, [[4], [3, 2], [1]]),
    ],
)
def test_the_decoder_takes_small_classes_in_groups(sizes, parts, units):
    """A class under MIN_CLASS_IMAGES costs more through its own cache than decoded: small
    classes of a worker's range share one (`_decode_group`), read once by the worker."""
    keys = [f"k{i}" for i in range(len(sizes))]
    assert predecode.decoding_order(keys, sizes, parts) == [[f"k{i}" for i in u] for u in units]
    small = predecode.MIN_CLASS_IMAGES
    for unit in predecode.decoding_order(keys, sizes, parts):
        held = [sizes[keys.index(k)] for k in unit]
        assert len(unit) == 1 or max(held) < small  # a large class is never in a group


def test_a_small_class_read_through_its_group_is_the_class_decoded_directly(
    odd_source, tmp_path, monkeypatch
):
    """The command's decoder puts its small classes (here all three) in groups: each class's
    catalog made with the group's files is the catalog decoded then, file for file (odd
    names, a broken file and a 16-bit one); the broken file is read again, as decoding it
    directly would (nothing of it is in the group)."""
    cache = tmp_path / "out" / f"{PREDECODE}1"
    _decode_all(odd_source, cache, parts=1, smallest=predecode.MIN_CLASS_IMAGES)
    groups = [p for p in cache.iterdir() if p.is_dir() and not p.is_symlink()]
    assert [p.name[: len(predecode.GROUP)] for p in groups] == [predecode.GROUP]
    monkeypatch.setenv(predecode.ENV_DIR, str(cache))
    for key in (CATS, DOGS, ONE):
        assert predecode.cached_class(key, SETTINGS) is None  # no cache of its own
        ahead = predecode.grouped_files(key, SETTINGS)
        assert ahead is not None, key
        direct = _catalog(odd_source, key)
        through = _catalog(odd_source, key, ahead=ahead)
        _same(through, direct)
        assert (through.reused, through.decoded) == (direct.reused, direct.decoded)
        assert len(ahead) == int((direct.table["status"] == "ok").sum())
    for key in (CATS, DOGS, ONE):  # as a worker does: each class dropped once written
        assert groups[0].is_dir()
        predecode.discard(key)
    assert not groups[0].exists()  # its last class dropped: the group with it
    assert predecode.grouped_files(CATS, SETTINGS) is None


def test_a_group_is_dropped_after_its_last_class_even_one_with_nothing_readable(
    tmp_path, monkeypatch
):
    """A group's folder goes once every class of it is written, the last one a class whose
    only file is broken (nothing of it in the group); a damaged group is not read: its
    classes are decoded as usual."""
    root = _source(tmp_path / "src", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    cache = tmp_path / "out" / f"{PREDECODE}1"
    _decode_all(root, cache, parts=1, smallest=predecode.MIN_CLASS_IMAGES)
    monkeypatch.setenv(predecode.ENV_DIR, str(cache))
    group = next(p for p in cache.iterdir() if p.is_dir() and not p.is_symlink())
    assert len(predecode.grouped_files("a", SETTINGS)) == 2
    predecode.discard("a")
    assert group.is_dir()  # "b" still to come
    assert predecode.grouped_files("b", SETTINGS) is None  # nothing of it decoded
    predecode.discard("b")
    assert not group.exists()

    damaged = tmp_path / "out2" / f"{PREDECODE}1"
    _decode_all(root, damaged, parts=1, smallest=predecode.MIN_CLASS_IMAGES)
    monkeypatch.setenv(predecode.ENV_DIR, str(damaged))
    group = next(p for p in damaged.iterdir() if p.is_dir() and not p.is_symlink())
    (group / "files.parquet").write_bytes(b"PAR1 not a table")
    assert predecode.grouped_files("a", SETTINGS) is None
    (group / "files.parquet").unlink()
    _decode_all(root, tmp_path / "fresh", parts=1, smallest=predecode.MIN_CLASS_IMAGES)
    fresh = next(p for p in (tmp_path / "fresh").iterdir() if p.is_dir() and not p.is_symlink())
    (fresh / "files.parquet").rename(group / "files.parquet")
    (group / "pixels.npy").write_bytes(b"")  # an empty store
    assert predecode.grouped_files("a", SETTINGS) is None


def test_a_file_rewritten_after_its_group_was_decoded_is_read_again(
    odd_source, tmp_path, monkeypatch
):
    cache = tmp_path / "out" / f"{PREDECODE}1"
    _decode_all(odd_source, cache, smallest=predecode.MIN_CLASS_IMAGES)
    path = odd_source / "cats é" / "im 3 [é] 0.png"
    Image.fromarray(np.full((30, 30, 3), 7, np.uint8)).save(path)  # other size and time
    os.utime(odd_source / "cats é" / "im 4 [é] 0.png", ns=(1, 1))  # same bytes, other time
    monkeypatch.setenv(predecode.ENV_DIR, str(cache))
    ahead = predecode.grouped_files(CATS, SETTINGS)
    through = _catalog(odd_source, CATS, ahead=ahead)
    _same(through, _catalog(odd_source, CATS))
    row = through.table.filter(pl.col("path") == "cats é/im 3 [é] 0.png")
    assert row["width"].item() == 30  # the new file's, not the one decoded before


def test_a_group_of_other_reading_settings_or_claimed_classes_is_not_used(
    odd_source, tmp_path, monkeypatch
):
    cache = _empty_cache(tmp_path, monkeypatch)
    # A worker reaches "dogs [x]" first: it claims it, and the decoder's group leaves it out.
    assert predecode.cached_class(DOGS, SETTINGS) is None
    _decode_all(odd_source, cache, parts=1, smallest=predecode.MIN_CLASS_IMAGES)
    assert predecode.grouped_files(DOGS, SETTINGS) is None
    assert predecode.grouped_files(CATS, SETTINGS) is not None
    for other in OTHER_SETTINGS:
        assert predecode.grouped_files(ONE, other) is None
        assert predecode.grouped_files(CATS, other) is None  # a group already read, too
    assert predecode.grouped_files(ONE, SETTINGS) is not None
    monkeypatch.delenv(predecode.ENV_DIR)
    assert predecode.grouped_files(ONE, SETTINGS) is None


def test_start_decodes_every_class_and_finish_removes_the_cache(odd_source, tmp_path):
    output = tmp_path / "out"
    (output / f"{PREDECODE}999999999").mkdir(parents=True)  # a killed command's
    try:
        assert predecode.start(
            odd_source,
            output,
            max_file_bytes=256 * 2**20,
            include_hidden=False,
            splits="auto",
            parts=2,
            smallest=1,
        )
        folder = Path(os.environ[predecode.ENV_DIR])
        assert folder == output / f"{PREDECODE}{os.getpid()}"
        assert not (output / f"{PREDECODE}999999999").exists()  # swept
        assert predecode._started.wait(120) == 0
        for key in (CATS, DOGS, ONE):
            assert predecode.cached_class(key, SETTINGS) is not None
    finally:
        predecode.finish()
    assert predecode.ENV_DIR not in os.environ
    assert [p.name for p in output.iterdir()] == []
    predecode.finish()  # twice: nothing left to do


def _keep_lists(output: Path) -> dict[str, pl.DataFrame]:
    return {
        p.name: pl.read_parquet(p, glob=False)
        .drop("decided_at", "decided_in", strict=False)
        .sort("path")
        for p in sorted((output / "keep_lists").glob("*.parquet"))
    }


def _catalogs(output: Path) -> dict[str, object]:
    """Each class's catalog table, pixel store and quarantine list."""
    out: dict[str, object] = {}
    for folder in sorted((output / "catalog" / "classes").iterdir()):
        out[folder.name] = (
            pl.read_parquet(folder / "images.parquet", glob=False),
            np.load(folder / "pixels.npy").tobytes(),
            sorted(p.name for p in folder.iterdir()),
        )
    out["quarantine"] = (output / "catalog" / "quarantine.csv").read_text()
    return out


def test_a_run_with_the_decoder_leaves_the_outputs_of_a_run_without(odd_source, tmp_path, dedup):
    """The command's own decoder (however much of the source it decoded before the
    workers started) and a cache decoded whole beforehand give the catalogs and keep lists
    of a run with no decoder; no cache is left behind; the source is untouched."""
    common = [
        "--source",
        str(odd_source),
        "--thresholds",
        "0.9",
        "--epochs",
        "1",
        "--executor",
        "processes",
        "--parallel",
        "2",
        "--device",
        "cpu",
    ]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in odd_source.rglob("*"))
    plain = dedup(
        "run", *common, "--output", str(tmp_path / "plain"), env_extra={predecode.ENV_OFF: "1"}
    )
    assert plain.returncode == 0, plain.stderr
    own = dedup("run", *common, "--output", str(tmp_path / "own"))
    assert own.returncode == 0, own.stderr
    # A cache decoded whole before the run, handed to it: every file from the cache, each
    # class's own or (as the command's decoder does with small classes) groups.
    ready = tmp_path / "ready" / f"{PREDECODE}1"
    _decode_all(odd_source, ready)
    grouped = tmp_path / "grouped" / f"{PREDECODE}1"
    _decode_all(odd_source, grouped, smallest=predecode.MIN_CLASS_IMAGES)
    assert len(list(grouped.glob("*.group"))) == 3
    for name, cache in (("given", ready), ("given_grouped", grouped)):
        given = dedup(
            "run",
            *common,
            "--output",
            str(tmp_path / name),
            env_extra={predecode.ENV_OFF: "1", predecode.ENV_DIR: str(cache)},
        )
        assert given.returncode == 0, given.stderr
    for name in ("own", "given", "given_grouped"):
        out = tmp_path / name
        mine, theirs = _catalogs(out), _catalogs(tmp_path / "plain")
        assert mine.keys() == theirs.keys() and len(mine) == 4  # 3 classes, the quarantine
        for k, value in mine.items():
            if k == "quarantine":
                assert value == theirs[k] and "broken.png" in value
                continue
            assert value[0].equals(theirs[k][0]) and value[1:] == theirs[k][1:], (name, k)
        assert _keep_lists(out).keys() == _keep_lists(tmp_path / "plain").keys()
        for k, table in _keep_lists(out).items():
            assert table.equals(_keep_lists(tmp_path / "plain")[k]), (name, k)
        assert not [p for p in out.iterdir() if p.name.startswith(PREDECODE)]
    # the given cache was read (each class's cache is dropped once its catalog is written)
    assert not [p for p in ready.iterdir() if p.is_dir()]
    assert not list(grouped.glob("*.group"))  # every class took its files from its group
    assert sorted((p.name, p.stat().st_mtime_ns) for p in odd_source.rglob("*")) == before


def test_verify_reads_again_what_a_group_decoded(odd_source, tmp_path, dedup):
    """--verify reads every file again: a file rewritten after its group was decoded, with
    the same size and modification time (`cp -p`, `rsync -t`), is caught, not taken from
    the group."""
    grouped = tmp_path / "grouped" / f"{PREDECODE}1"
    _decode_all(odd_source, grouped, smallest=predecode.MIN_CLASS_IMAGES)
    path = odd_source / "cats é" / "im 3 [é] 0.png"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes: a chunk's checksum no longer holds
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    done = dedup(
        "run",
        *["--source", str(odd_source), "--output", str(tmp_path / "out"), "--verify"],
        *["--thresholds", "0.9", "--epochs", "1", "--device", "cpu"],
        *["--executor", "processes", "--parallel", "2"],
        env_extra={predecode.ENV_OFF: "1", predecode.ENV_DIR: str(grouped)},
    )
    assert done.returncode == 0, done.stderr
    table = pl.read_parquet(tmp_path / "out" / "catalog" / "classes" / CATS / "images.parquet")
    row = table.filter(pl.col("path") == "cats é/im 3 [é] 0.png")
    direct = _catalog(odd_source, CATS).table.filter(pl.col("path") == "cats é/im 3 [é] 0.png")
    assert row["content_hash"].item() == direct["content_hash"].item()
    assert row["status"].item() == direct["status"].item()


def test_no_decoder_writes_into_a_folder_that_is_not_an_output(odd_source, tmp_path, dedup):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone's")
    done = dedup(
        "run",
        "--source",
        str(odd_source),
        "--output",
        str(foreign),
        "--executor",
        "processes",
        "--parallel",
        "2",
        "--epochs",
        "1",
    )
    assert done.returncode != 0 and "not empty" in done.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_finish_removes_the_folders_start_made_for_a_refused_command(odd_source, tmp_path):
    """A command refused after the decoder started (a bad setting is found once the
    settings are read) leaves no output folder: those the cache made are removed while
    nothing else is in them; a folder that was there stays."""
    nested = tmp_path / "a" / "b" / "out"
    try:
        assert predecode.start(
            odd_source, nested, max_file_bytes=1, include_hidden=False, splits="auto", parts=1
        )
        assert (nested / f"{PREDECODE}{os.getpid()}").is_dir()
    finally:
        predecode.finish()
    assert not (tmp_path / "a").exists() and tmp_path.is_dir()
    kept = tmp_path / "kept"
    try:
        assert predecode.start(
            odd_source, kept, max_file_bytes=1, include_hidden=False, splits="auto", parts=1
        )
        (kept / "pipeline.json").write_text("{}")  # the run wrote into it meanwhile
    finally:
        predecode.finish()
    assert [p.name for p in kept.iterdir()] == ["pipeline.json"]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize(
    ("n", "identical"), [(1, False), (2, False), (2, True), (3, True), (257, False)]
)
def test_through_the_cache_or_not_every_class_size_gives_one_catalog(
    tmp_path, monkeypatch, n, identical, grouped
):
    """The cache's promise over class sizes (one image, two, all identical, past the
    decoder's smallest class), through a class's own cache or a group: the catalog read
    through it is the catalog decoded."""
    root = tmp_path / "src"
    folder = root / "only"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(n)
    same = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    for i in range(n):
        pixels = same if identical else rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d} [é].png")
    cache = tmp_path / "out" / f"{PREDECODE}1"
    smallest = n + 1 if grouped else 1
    _decode_all(root, cache, parts=1, smallest=smallest)
    monkeypatch.setenv(predecode.ENV_DIR, str(cache))
    if grouped:
        assert predecode.cached_class("only", SETTINGS) is None
        through = _catalog(root, "only", ahead=predecode.grouped_files("only", SETTINGS))
        assert through.reused == 0 and through.decoded == n  # decoded in this run
    else:
        cached = predecode.cached_class("only", SETTINGS)
        assert cached is not None
        through = _catalog(root, "only", cached)
        assert through.reused == n and through.decoded == 0
    _same(through, _catalog(root, "only"))


@pytest.mark.parametrize(
    "refusal",
    [("--epochs", "many"), ("--help",), ("--thresholds", "0.95", "--nonsense")],
)
def test_a_command_line_refused_after_the_decoder_started_leaves_nothing(
    odd_source, tmp_path, dedup, refusal
):
    """The decoder starts before the command line is parsed in full (beside the imports);
    a usage error or --help found then stops it and removes its cache and the output
    folders it made: nothing is left, no process decodes on."""
    out = tmp_path / "new" / "out"
    argv = ["--source", str(odd_source), "--output", str(out), "--executor", "processes"]
    done = dedup("run", *argv, *refusal)
    assert done.returncode == (0 if refusal == ("--help",) else 2), done.stderr
    assert not (tmp_path / "new").exists()
    assert not _processes_naming(out)


def _processes_naming(path: Path) -> list[str]:
    """Command lines of this machine's processes that name `path` (Linux: /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if str(path) in line:
            found.append(line)
    return found


def test_a_class_taken_from_the_cache_links_its_store_instead_of_writing_it(
    odd_source, tmp_path, monkeypatch
):
    """`link_store`: the catalog's store is the cached file itself (one inode, the bytes
    `np.save` of the directly decoded pixels would write, the digest of those bytes) when
    the pixels are the cached ones; otherwise nothing is linked and the caller writes."""
    import io

    from dedup_assets.core.data.class_catalog import pixels_digest

    cache = tmp_path / "out" / f"{PREDECODE}1"
    _decode_all(odd_source, cache)
    monkeypatch.setenv(predecode.ENV_DIR, str(cache))
    for n, key in enumerate((CATS, DOGS, ONE)):
        cached = predecode.cached_class(key, SETTINGS)
        through = _catalog(odd_source, key, cached)
        target = tmp_path / f"store{n}.npy"
        digest = predecode.link_store(cached[1], through.pixels, target)
        assert digest == pixels_digest(target, digest) and digest.startswith("rows:")
        assert target.stat().st_ino == Path(cached[1].filename).stat().st_ino
        saved = io.BytesIO()
        np.save(saved, _catalog(odd_source, key).pixels)
        assert target.read_bytes() == saved.getvalue()

    cached = predecode.cached_class(CATS, SETTINGS)
    pixels = np.array(cached[1])
    other = pixels.copy()
    other.flat[-1] ^= 1  # one bit of one pixel
    for given, wanted in (
        (None, pixels),  # not read through the cache
        (pixels, pixels),  # an array of its own, no file behind it
        (cached[1], other),
        (cached[1], pixels[:-1]),
        (cached[1], pixels.astype(np.uint16)),
    ):
        target = tmp_path / "not.npy"
        assert predecode.link_store(given, wanted, target) is None
        assert not target.exists()
    (Path(cached[1].filename).parent / predecode.STORE_DIGEST).unlink()  # an older cache
    assert predecode.link_store(cached[1], pixels, tmp_path / "old.npy") is None
    assert not (tmp_path / "old.npy").exists()
