"""Nothing under the source is dropped without a word, 16-bit greyscale keeps its brightness,
and the command's messages are one line (usage errors exit 2) with commands that paste.
Through the real `dedup` command where a user meets it (tiny data, --epochs 1)."""

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import DEDUP, run_dedup
from PIL import Image

from dedup_assets.core.data.artifacts import read_catalog
from dedup_assets.core.data.class_catalog import QUARANTINE_SCHEMA
from dedup_assets.core.data.image_folder import (
    HIDDEN_FILE,
    HIDDEN_FOLDER,
    OWN_ROOT_FILES,
    decode_image_bytes,
    reason_kind,
    scan_image_folder,
)
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality import demo_data, planting
from dedup_assets.core.quality.demo_data import generate_demo_dataset

FAST = ("--epochs", "1", "--device", "cpu", "--precision", "fp32", "--thresholds", "0.95")
HIDDEN = {".DS_Store", ".hiddenclass", "forest/.hidden.png", "forest/.thumbs"}


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)


def _png16(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ 16-bit greyscale


def test_dark_and_bright_16_bit_copies_decode_to_different_pixels():
    picture = np.tile(np.linspace(0.0, 1.0, 64), (64, 1))
    dark, bright = (decode_image_bytes(_png16(picture * top)) for top in (8000, 60000))
    assert dark.mode == bright.mode == "I;16"
    assert dark.pixel_hash != bright.pixel_hash
    np.testing.assert_array_equal(dark.pixels[..., 0], np.round(picture * 8000 / 257))
    assert dark.pixels.max() == 31 and bright.pixels.max() == 233  # not both stretched to 255


def test_a_16_bit_ramp_maps_by_bit_depth():
    ramp = np.array([0, 128, 129, 257, 385, 386, 32896, 65278, 65535])
    expected = [0, 0, 1, 1, 1, 2, 128, 254, 255]  # round(value / 257)
    values = np.zeros((64, 64))
    values[:, : ramp.size] = ramp
    d = decode_image_bytes(_png16(values))
    assert d.pixels[0, : ramp.size, 0].tolist() == expected
    assert (d.pixels[..., 0] == d.pixels[..., 2]).all()


def test_big_endian_16_bit_tiff_matches_the_png():
    values = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    tiff = Image.frombytes("I;16B", (64, 64), values.astype(">u2").tobytes())
    buf = io.BytesIO()
    tiff.save(buf, "TIFF")
    from_tiff = decode_image_bytes(buf.getvalue())
    assert from_tiff.mode == "I;16B"
    assert from_tiff.pixel_hash == decode_image_bytes(_png16(values)).pixel_hash


def _saved(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "scale", "fmt"),
    [
        ("F", 1.0, "TIFF"),  # float scans in 0..255 (decoded white: clipped to 0..1 before)
        ("I", 1.0, "TIFF"),  # 32-bit integers holding 8-bit values (decoded 0 and 1 before)
        ("I;16", 1.0, "PNG"),  # cv2.imwrite(a.astype(uint16)): 8-bit values, 16-bit file
        ("F", 1 / 255, "TIFF"),  # float 0..1: the usual range, as before
    ],
)
def test_wide_images_holding_narrower_values_keep_them(mode, scale, fmt):
    """Different pictures stored as float or 16/32-bit files holding 0..255 (or 0..1)
    values decode to their own pixels, as their 8-bit versions do, with a note saying
    how they were read; before, every float one decoded white and every integer one black,
    so distinct images were removed as exact copies of each other."""
    pictures = [np.asarray(_image(seed).convert("L"), dtype=np.float64) for seed in range(3)]
    decoded = []
    for grey in pictures:
        values = grey * scale
        if mode == "F":
            img = Image.fromarray(values.astype(np.float32), mode="F")
        elif mode == "I":
            img = Image.fromarray(values.astype(np.int32), mode="I")
        else:
            img = Image.fromarray(values.astype(np.uint16))
        decoded.append(decode_image_bytes(_saved(img, fmt)))
    assert len({d.pixel_hash for d in decoded}) == 3
    for d, grey in zip(decoded, pictures, strict=True):
        assert d.error is None
        assert np.abs(d.pixels[..., 0].astype(int) - grey).max() <= 1
    usual = mode == "F" and scale != 1.0
    assert all((d.note is None) == usual for d in decoded), [d.note for d in decoded]
    if not usual:
        assert "0..255" in decoded[0].note and "read as that range" in decoded[0].note


@pytest.mark.parametrize("mode", ["L", "LA", "P"])
def test_8_bit_greyscale_and_palette_keep_their_values(mode):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    img = Image.fromarray(grey).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    d = decode_image_bytes(buf.getvalue())
    np.testing.assert_array_equal(d.pixels, np.asarray(img.convert("RGB")))


# ------------------------------------------------------------------ every entry is accounted for


def test_own_root_files_are_the_names_the_project_writes():
    assert set(OWN_ROOT_FILES) == {
        planting.GROUND_TRUTH_FILENAME,
        demo_data.MANIFEST_FILENAME,
        demo_data.LEAKS_FILENAME,
    }
    assert {reason_kind(r) for r in OWN_ROOT_FILES.values()} == {"ground truth or manifest"}
    assert reason_kind(HIDDEN_FILE) == reason_kind(HIDDEN_FOLDER) == "hidden"
    assert reason_kind("larger than the limit of 9 bytes (max_file_bytes)") == "too large"
    assert reason_kind("OSError: broken data stream") == "unreadable"


def _build_source(root: Path) -> None:
    generate_demo_dataset(root, seed=2, per_class=8, duplicate_fraction=0.25)
    for extra in ("desert", "road", "urban"):
        shutil.rmtree(root / extra)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _image(1).save(root / "forest" / ".hidden.png")
    (root / "forest" / ".thumbs").mkdir()
    _image(2).save(root / "forest" / ".thumbs" / "t.png")
    (root / ".hiddenclass").mkdir()
    for i in range(3):
        _image(10 + i).save(root / ".hiddenclass" / f"h{i}.png")


def test_scan_lists_hidden_entries_and_reads_them_when_asked(tmp_path):
    _build_source(tmp_path)
    scan = scan_image_folder(tmp_path)
    hidden = {s.path: s.reason for s in scan.skipped if reason_kind(s.reason) == "hidden"}
    assert hidden == {
        ".DS_Store": HIDDEN_FILE,
        ".hiddenclass": HIDDEN_FOLDER,
        "forest/.hidden.png": HIDDEN_FILE,
        "forest/.thumbs": HIDDEN_FOLDER,
    }
    assert ".demo_manifest.json" in {s.path for s in scan.skipped}
    assert not any("/." in f.rel_path for f in scan.files) and ".hiddenclass" not in scan.classes
    both = scan_image_folder(tmp_path, include_hidden=True)
    paths = {f.rel_path for f in both.files}
    assert {"forest/.hidden.png", "forest/.thumbs/t.png", ".hiddenclass/h0.png"} <= paths
    assert len(both.files) == len(scan.files) + 5
    assert both.classes["%2Ehiddenclass"] == ".hiddenclass"
    reasons = {s.path: s.reason for s in both.skipped}
    assert reasons[".DS_Store"].startswith("file directly in the source root")
    assert reasons[".demo_manifest.json"] == OWN_ROOT_FILES[".demo_manifest.json"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One source with hidden entries, run plainly and then with --include-hidden, into an
    output whose path holds a space and a quote."""
    base = tmp_path_factory.mktemp("listing")
    source, output = base / "source", base / "out put's"
    _build_source(source)
    plain = run_dedup("run", "--source", str(source), "--output", str(output), *FAST)
    quarantine = pl.read_csv(OutputLayout(output).quarantine, schema=QUARANTINE_SCHEMA)
    catalog = read_catalog(OutputLayout(output))
    hidden = run_dedup(
        "run", "--source", str(source), "--output", str(output), *FAST, "--include-hidden"
    )
    return {
        "source": source,
        "output": output,
        "plain": plain,
        "plain_quarantine": quarantine,
        "plain_catalog": catalog,
        "hidden": hidden,
    }


def test_every_file_under_the_source_is_catalogued_or_listed(runs):
    assert runs["plain"].returncode == 0, runs["plain"].stdout + runs["plain"].stderr
    listed = dict(zip(*runs["plain_quarantine"].select("path", "reason"), strict=True))
    assert {p for p, r in listed.items() if reason_kind(r) == "hidden"} == HIDDEN
    assert listed[".hiddenclass"] == HIDDEN_FOLDER and listed[".DS_Store"] == HIDDEN_FILE
    catalogued = set(runs["plain_catalog"]["path"])
    source = runs["source"]
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if path.is_file() and str(rel) not in catalogued:
            ancestors = {str(rel), *(str(p) for p in rel.parents)}
            assert ancestors & set(listed), f"{rel} is neither catalogued nor listed"


def test_the_last_screen_counts_what_was_left_out(runs):
    lines = runs["plain"].stdout.splitlines()
    (line,) = [x for x in lines if x.startswith("catalog: ")]
    assert lines.index(line) > lines.index(next(x for x in lines if x.startswith("total")))
    images = runs["plain_catalog"].filter(pl.col("status") == "ok").height
    assert line == (
        f"catalog: {images} images; listed with the reason in "
        f"{OutputLayout(runs['output'].resolve()).quarantine}: 4 hidden, "
        "2 ground truth or manifest"
    )


def test_include_hidden_reads_hidden_files_and_is_saved(runs):
    done, output = runs["hidden"], runs["output"]
    assert done.returncode == 0, done.stdout + done.stderr
    keep = pl.read_parquet(output / "keep_lists" / "0.95.parquet")
    paths = set(keep["path"])
    assert {"forest/.hidden.png", "forest/.thumbs/t.png", ".hiddenclass/h2.png"} <= paths
    assert keep.height == runs["plain_catalog"].height + 5
    q = pl.read_csv(OutputLayout(output).quarantine, schema=QUARANTINE_SCHEMA)
    assert not any(reason_kind(r) == "hidden" for r in q["reason"])
    assert "1 outside a class folder" in done.stdout  # .DS_Store, now read like any file
    assert '"include_hidden": true' in (output / "pipeline.json").read_text()


def test_the_ui_hint_pastes_back_to_the_same_folder(runs):
    (line,) = [x for x in runs["plain"].stdout.splitlines() if x.startswith("open in the UI: ")]
    command = line.removeprefix("open in the UI: ")
    assert _pasted(command) == ["ui", "--output", str(runs["output"].resolve())]


def _pasted(command: str) -> list[str]:
    """The arguments `dedup` gets when `command` is pasted into bash."""
    done = subprocess.run(
        ["bash", "-c", 'dedup() { printf "%s\\0" "$@"; }; ' + command],
        capture_output=True,
        check=True,
    )
    return [os.fsdecode(a) for a in done.stdout.split(b"\0")[:-1]]


# ------------------------------------------------------------------ messages


def _one_line_usage_error(done: subprocess.CompletedProcess, command: str) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), done.stderr
    assert "Traceback" not in done.stderr and "usage:" not in done.stderr
    return lines[0]


def test_run_without_source_says_so_in_one_line():
    line = _one_line_usage_error(run_dedup("run"), "dedup run")
    assert "--source" in line and "dedup run --help" in line


def test_missing_source_folders_are_usage_errors_for_run_and_plant(tmp_path):
    missing = str(tmp_path / "nonexistent")
    done = run_dedup("plant", "--source", missing, "--dest", str(tmp_path / "x"))
    assert "does not exist" in _one_line_usage_error(done, "dedup plant")
    assert not (tmp_path / "x").exists()
    done = run_dedup("run", "--source", missing, "--output", str(tmp_path / "o"))
    assert "does not exist" in _one_line_usage_error(done, "dedup run")


@pytest.mark.parametrize(
    ("args", "command", "says"),
    [
        ((), "dedup", "command"),
        (("bogus",), "dedup", "invalid choice"),
        (("run", "--source", "{src}", "--epochs", "x"), "dedup run", "invalid int value"),
        (("run", "--source", "{src}", "--nope"), "dedup", "unrecognized arguments"),
        (("plant", "--source", "{src}"), "dedup plant", "--dest"),
        (("plant", "--source", "{src}", "--dest", "{src}/in"), "dedup plant", "inside it"),
        (("plant", "--source", "{src}", "--dest", "{full}"), "dedup plant", "already exists"),
        (("ui", "--port", "x"), "dedup ui", "invalid int value"),
    ],
)
def test_every_usage_error_is_one_line_and_exit_2(tmp_path, args, command, says):
    (tmp_path / "src" / "c").mkdir(parents=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    args = [a.format(src=tmp_path / "src", full=tmp_path / "full") for a in args]
    assert says in _one_line_usage_error(run_dedup(*args), command)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("exists", [True, False])
def test_ui_on_a_folder_without_a_run_refuses_in_one_line(tmp_path, exists):
    output = tmp_path / "no run's here"
    if exists:
        output.mkdir()
    line = _one_line_usage_error(run_dedup("ui", "--output", str(output), timeout=60), "dedup ui")
    assert "no pipeline.json" in line and "dedup run --source" in line
    assert ("holds no finished run" in line) == exists
    suggested = line.split("`")[1]  # `dedup run --source YOUR_IMAGES --output ...`
    assert _pasted(suggested)[-2:] == ["--output", str(output.resolve())]
    assert not output.exists() or list(output.iterdir()) == [], "nothing written, no server"


def test_a_change_of_many_classes_names_ten_and_counts_them():
    from dedup_assets.core.data.source_index import SourceChanges

    keys = tuple(f"c{i:05d}" for i in range(300))
    text = SourceChanges(added=keys, changed=("b",), removed=()).describe()
    assert text == (
        "new: 300 classes (c00000, c00001, c00002, c00003, c00004, c00005, c00006, c00007, "
        "c00008, ..., c00299); changed: b"
    )
    few = SourceChanges(added=keys[:10], changed=(), removed=("x",)).describe()
    assert few == "new: " + ", ".join(keys[:10]) + "; removed: x"
    assert SourceChanges((), (), ()).describe() == "nothing changed"


def test_a_change_names_classes_by_their_folders_not_their_partition_keys():
    """The last screen's `source:` line showed keys (`class%20with%20space`, `bad%FFclass`,
    `train.river`); it names the folders as the user wrote them."""
    from dedup_assets.core.data.image_folder import class_key
    from dedup_assets.core.data.source_index import SourceChanges
    from dedup_assets.core.data.splits import split_class_key

    names = [b"class with space", "klasse \u00fc \u65e5".encode(), b"bad\xffclass", b"x" * 90]
    keys = tuple(class_key(n) for n in names)
    assert keys[0] == "class%20with%20space" and "~" in keys[3]
    text = SourceChanges(added=keys, changed=(split_class_key("train", "river"),), removed=())
    assert text.describe() == (
        "new: class with space, klasse \u00fc \u65e5, bad\\xffclass, "
        + "x" * 40
        + "…; changed: train/river"
    )


def _unprivileged() -> list[str] | None:
    """A prefix that runs a command bound by file permissions (root is not: it drops the
    capabilities that let it read any file), or None where none can be made."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    caps = "-dac_override,-dac_read_search,-fowner"
    prefix = [setpriv, "--bounding-set", caps, "--inh-caps", caps]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def test_verify_reads_again_a_file_whose_permissions_were_fixed(tmp_path):
    """An unreadable file is quarantined; `chmod` changes no size or time, so the default
    check cannot see it fixed, and before, even --verify left it quarantined (and its exact
    copy never found). --verify now reads it again."""
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("cannot run a command bound by file permissions here (root without setpriv)")
    source = tmp_path / "src"
    for c in ("a", "b"):
        (source / c).mkdir(parents=True)
        for i in range(5):
            _image(10 * (c == "b") + i).save(source / c / f"{c}{i}.png")
    locked = source / "a" / "copy.png"
    shutil.copyfile(source / "a" / "a0.png", locked)
    locked.chmod(0o000)
    out = tmp_path / "out"
    dedup = str(DEDUP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEDUP_")}
    env.pop("DAGSTER_HOME", None)

    def run(*extra: str) -> subprocess.CompletedProcess:
        args = [*prefix, dedup, "run", "--source", str(source), "--output", str(out), *FAST]
        return subprocess.run([*args, *extra], capture_output=True, text=True, env=env)

    first = run()
    assert first.returncode in (0, 3), first.stdout + first.stderr
    quarantine = pl.read_csv(OutputLayout(out).quarantine, schema=QUARANTINE_SCHEMA)
    assert "a/copy.png" in quarantine["path"].to_list()
    locked.chmod(0o644)
    verified = run("--verify")
    assert verified.returncode in (0, 3), verified.stdout + verified.stderr
    assert "source: changed: a\n" in verified.stdout, verified.stdout
    quarantine = pl.read_csv(OutputLayout(out).quarantine, schema=QUARANTINE_SCHEMA)
    assert "a/copy.png" not in quarantine["path"].to_list()
    keep = pl.read_parquet(OutputLayout(out).keep_list("0.95")).filter(
        pl.col("path").is_in(["a/a0.png", "a/copy.png"])
    )
    assert keep.height == 2 and keep["kept"].sum() == 1
    assert keep.filter(~pl.col("kept"))["match"].to_list() == ["exact"]


@pytest.mark.parametrize("existing", [False, True])
def test_an_output_it_may_not_write_is_refused_in_one_line(tmp_path, existing):
    """An output folder the user may not write (new, below a read-only folder, or an
    earlier output made read-only) ended in `[Errno 13] Permission denied` with exit 1;
    it is a setting to change: exit 2, one line naming the folder, nothing done."""
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("cannot run a command bound by file permissions here (root without setpriv)")
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    for i in range(3):
        _image(i).save(source / "a" / f"{i}.png")
    parent = tmp_path / "locked"
    parent.mkdir()
    out = parent / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEDUP_")}
    env.pop("DAGSTER_HOME", None)
    args = [*prefix, str(DEDUP), "run", "--source", str(source), "--output", str(out), *FAST]
    if existing:
        made = subprocess.run(args, capture_output=True, text=True, env=env)
        assert made.returncode in (0, 3), made.stdout + made.stderr
        (source / "a" / "3.png").write_bytes((source / "a" / "0.png").read_bytes())
        out.chmod(0o555)
    else:
        parent.chmod(0o555)
    try:
        done = subprocess.run(args, capture_output=True, text=True, env=env)
    finally:
        parent.chmod(0o755)
        if out.exists():
            out.chmod(0o755)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"dedup run: error: output {out} cannot be written: Permission denied"
    ), done.stderr
    assert existing == out.exists()


def test_a_new_max_file_bytes_takes_effect_on_a_rerun_both_ways(tmp_path):
    """`--max-file-bytes` changed on a rerun of the same output: a file the old limit skipped
    is read, one the new limit excludes is skipped and leaves the keep list and the clean
    copy; files below both limits keep their rows. It said "nothing changed" and kept the
    first run's catalog, either way."""
    source, out = tmp_path / "src", tmp_path / "out"
    sizes = {}
    for name in ("forest", "river"):
        (source / name).mkdir(parents=True)
        for i in range(8):
            path = source / name / f"{name}_{i}.png"
            if i < 2:  # fine noise: a large PNG
                rng = np.random.default_rng(100 * len(name) + i)
                Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path)
            else:
                _image(10 * len(name) + i).save(path)
            sizes[f"{name}/{path.name}"] = path.stat().st_size
    large = sorted(p for p, n in sizes.items() if n > 20_000)
    assert len(large) == 4 and max(n for p, n in sizes.items() if p not in large) < 20_000

    def run(*limit: str) -> tuple[set[str], set[str]]:
        done = run_dedup("run", "--source", str(source), "--output", str(out), *FAST, *limit)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "nothing changed" not in done.stdout, done.stdout
        trained = "[training] starting" in done.stdout
        progress = [x for x in done.stdout.splitlines() if x.startswith("  [training] epoch 1/1")]
        assert len(progress) == trained, done.stdout  # its last line, once: not a heartbeat
        keep = pl.read_csv(out / "keep_lists" / "0.95.csv")
        quarantine = pl.read_csv(out / "catalog" / "quarantine.csv")
        too_large = set(quarantine.filter(pl.col("reason").str.contains("larger than"))["path"])
        clean = {
            p.relative_to(out / "clean" / "0.95").as_posix()
            for p in (out / "clean" / "0.95").rglob("*.png")
        }
        assert clean == set(keep.filter(pl.col("kept"))["path"])
        return set(keep["path"]), too_large

    listed, skipped = run("--max-file-bytes", "20000")
    assert skipped == set(large) and listed == set(sizes) - set(large)
    # (the first run trains: its progress is on the screen without --verbose)
    listed, skipped = run()  # the default limit: the large files are read now
    assert skipped == set() and listed == set(sizes)
    listed, skipped = run("--max-file-bytes", "20000")  # and skipped again
    assert skipped == set(large) and listed == set(sizes) - set(large)


def test_an_empty_evaluation_split_is_said_on_the_last_screen(tmp_path):
    """`test/` with no image: the run goes on (exit 0) and the last screen says nothing of
    it was compared with train (it said nothing, as if the check had passed); once it holds
    an image the line is gone."""
    source, out = tmp_path / "src", tmp_path / "out"
    for name in ("forest", "river"):
        (source / "train" / name).mkdir(parents=True)
        for i in range(6):
            _image(20 * len(name) + i).save(source / "train" / name / f"{name}_{i}.png")
    (source / "test").mkdir()
    run = ("run", "--source", str(source), "--output", str(out), *FAST)
    done = run_dedup(*run)
    assert done.returncode == 0, done.stdout + done.stderr
    said = "  leakage: the test split holds no image: nothing of it was compared with train"
    assert said in done.stdout.splitlines(), done.stdout
    (source / "test" / "forest").mkdir()
    _image(999).save(source / "test" / "forest" / "new.png")
    again = run_dedup(*run)
    assert again.returncode in (0, 3), again.stdout + again.stderr
    assert "holds no image" not in again.stdout and "  leakage: " in again.stdout
    # emptied again after a run that judged it: the line comes back, alone (it was gone,
    # or beside "no test image has a copy in train")
    (source / "test" / "forest" / "new.png").unlink()
    emptied = run_dedup(*run)
    assert emptied.returncode == 0, emptied.stdout + emptied.stderr
    leakage = [x for x in emptied.stdout.splitlines() if x.startswith("  leakage: ")]
    assert leakage == [said], emptied.stdout
