"""Tests for reading a labelled ImageFolder (dedup_assets.core.data.image_folder)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import signal
import time
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
from PIL import Image

from dedup_assets.core.data import image_folder
from dedup_assets.core.data.image_folder import (
    DEFAULT_MAX_FILE_BYTES,
    HIDDEN_FILE,
    HIDDEN_FOLDER,
    IMAGE_EXTENSIONS,
    OWN_ROOT_FILES,
    DecodedImage,
    FolderScan,
    ImageFile,
    SkippedPath,
    SourceFileError,
    class_key,
    decode_image_bytes,
    pixel_hash,
    read_and_decode,
    read_source_file,
    scan_image_folder,
    unique_ids,
)


def _rgb(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def _flat(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


U16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 13 + 1000).astype(np.uint16)

# rel_path -> how the file is written; the valid images of the folder.
VALID = {
    "Forest/a.png": lambda p: _rgb(1).save(p, "PNG"),
    "Forest/b.jpg": lambda p: _flat((200, 30, 40)).save(p, "JPEG", quality=95),
    "Forest/c.bmp": lambda p: _rgb(3).save(p, "BMP"),
    "Forest/d.tif": lambda p: _rgb(4).save(p, "TIFF"),
    "Forest/e.webp": lambda p: _rgb(5).save(p, "WEBP", lossless=True),
    "Forest/grey.png": lambda p: Image.fromarray(
        np.tile(np.arange(64, dtype=np.uint8)[None, :] * 4, (64, 1)), mode="L"
    ).save(p, "PNG"),
    "Forest/nested/deep/n.PNG": lambda p: _rgb(6).save(p, "PNG"),
    "Sea Lake/rgba.png": lambda p: _rgba_image().save(p, "PNG"),
    "Sea Lake/palette.png": lambda p: _rgb(7).quantize(colors=16).save(p, "PNG"),
    "Sea Lake/sixteen.png": lambda p: Image.fromarray(U16).save(p, "PNG"),
    "Sea Lake/wide.jpeg": lambda p: _wide_image().save(p, "JPEG", quality=95),
    "Sea Lake/copy1.png": lambda p: _rgb(11).save(p, "PNG"),
    "Sea Lake/copy2.png": lambda p: _rgb(11).save(p, "PNG"),
}
CORRUPT = "Sea Lake/broken.jpg"


def _rgba_image() -> Image.Image:
    arr = np.zeros((64, 64, 4), dtype=np.uint8)
    arr[..., 0] = 10
    arr[..., 1] = 20
    arr[..., 2] = 30
    arr[..., 3] = 255
    arr[:, :32, 3] = 0  # left half fully transparent
    arr[0, 40] = (0, 0, 0, 128)  # half-transparent black pixel
    return Image.fromarray(arr, mode="RGBA")


def _wide_image() -> Image.Image:
    # 200x100: a 20 px green band on the left edge, grey elsewhere. A centre crop would
    # lose the band; resizing the whole frame keeps it (about 6 of 64 columns).
    arr = np.full((100, 200, 3), 128, dtype=np.uint8)
    arr[:, :20] = (0, 255, 0)
    return Image.fromarray(arr, mode="RGB")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    for rel, write in VALID.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    (root / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    (root / "Forest" / ".hidden.png").write_bytes((root / "Forest" / "a.png").read_bytes())
    (root / "Forest" / ".hiddendir").mkdir()
    _rgb(12).save(root / "Forest" / ".hiddendir" / "x.png", "PNG")
    (root / ".hiddenclass").mkdir()
    _rgb(13).save(root / ".hiddenclass" / "y.png", "PNG")
    (root / "Forest" / "notes.txt").write_text("not an image")
    (root / "Forest" / "noext").write_bytes((root / "Forest" / "a.png").read_bytes())
    _rgb(14).save(root / "toplevel.png", "PNG")
    (root / "README.md").write_text("about this data set")
    (root / "ground_truth.csv").write_text("a,b\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


# The entries of `folder` that are reported as skipped, with their reasons.
FOLDER_SKIPPED = {
    ".DS_Store": (None, HIDDEN_FILE),
    ".hiddenclass": (None, HIDDEN_FOLDER),
    "Forest/.hidden.png": ("Forest", HIDDEN_FILE),
    "Forest/.hiddendir": ("Forest", HIDDEN_FOLDER),
    "ground_truth.csv": (None, OWN_ROOT_FILES["ground_truth.csv"]),
    "Forest/noext": ("Forest", "no file extension, so not an image: skipped"),
    "Forest/notes.txt": ("Forest", "file extension '.txt' is not an image extension: skipped"),
    "README.md": (None, "file directly in the source root, not in a class folder: skipped"),
    "toplevel.png": (
        None,
        "image directly in the source root, not in a class folder: skipped",
    ),
}


def test_scan_finds_exactly_the_image_files(folder):
    scan = scan_image_folder(folder)
    assert isinstance(scan, FolderScan)
    files = scan.files
    expected = sorted([*VALID, CORRUPT])
    assert [f.rel_path for f in files] == expected
    for f in files:
        assert f.class_name == f.rel_path.split("/")[0]
        assert f.class_key == class_key(f.class_name)
        assert f.raw_path == os.fsencode(f.rel_path)
        assert f.source_path(folder) == str(folder / f.rel_path)
    assert {f.class_name for f in files} == {"Forest", "Sea Lake"}
    assert {f.class_key for f in files} == {"Forest", "Sea%20Lake"}
    nested = next(f for f in files if "nested" in f.rel_path)
    assert nested.class_name == "Forest"


def test_scan_reports_skipped_entries_with_reasons(folder):
    # Nothing is skipped silently: hidden entries (a hidden folder as one entry) and the
    # dataset's own files are listed too.
    skipped = scan_image_folder(folder).skipped
    got = {s.path: (s.class_name, s.reason) for s in skipped}
    assert got == FOLDER_SKIPPED
    assert [s.raw_path for s in skipped] == sorted(os.fsencode(p) for p in FOLDER_SKIPPED)
    assert ".gif" in IMAGE_EXTENSIONS


@pytest.mark.parametrize(("name", "fmt"), [("a.jfif", "JPEG"), ("b.JPE", "JPEG"), ("c.ppm", "PPM")])
def test_other_names_of_jpeg_and_netpbm_files_are_images(tmp_path, name, fmt):
    """`.jfif`/`.jpe` (JPEG under other names, as browsers save them) and Netpbm files were
    skipped as "not an image extension" though Pillow reads them: lost images."""
    (tmp_path / "c").mkdir()
    img = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    img.save(tmp_path / "c" / name, fmt)
    scan = scan_image_folder(tmp_path)
    assert [f.rel_path for f in scan.files] == [f"c/{name}"] and not scan.skipped
    decoded = decode_image_bytes((tmp_path / "c" / name).read_bytes())
    assert decoded.error is None and decoded.pixels.shape == (64, 64, 3)


def test_ignored_root_file_is_reported_inside_a_class_folder(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ground_truth.csv").write_text("x")
    (tmp_path / "ground_truth.csv").write_text("x")
    scan = scan_image_folder(tmp_path)
    assert scan.files == []
    assert scan.skipped == [
        SkippedPath(
            "c/ground_truth.csv",
            b"c/ground_truth.csv",
            "c",
            "file extension '.csv' is not an image extension: skipped",
        ),
        SkippedPath(
            "ground_truth.csv", b"ground_truth.csv", None, OWN_ROOT_FILES["ground_truth.csv"]
        ),
    ]


def test_scan_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")


def test_scan_root_that_is_a_file_raises(tmp_path):
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        scan_image_folder(tmp_path / "f.png")


@pytest.fixture(scope="module")
def decoded(folder) -> dict[str, DecodedImage]:
    files = scan_image_folder(folder).files
    out = read_and_decode(folder, files, workers=1)
    assert len(out) == len(files)
    return {f.rel_path: d for f, d in zip(files, out, strict=True)}


def test_every_valid_image_decodes_to_64x64x3(folder, decoded):
    for rel in VALID:
        d = decoded[rel]
        assert d.error is None, (rel, d.error)
        assert d.pixels is not None and d.pixels.shape == (64, 64, 3), rel
        assert d.pixels.dtype == np.uint8
        data = (folder / rel).read_bytes()
        assert d.content_hash == hashlib.sha1(data).hexdigest()[:16]
        assert d.size_bytes == len(data)
        assert d.pixel_hash == hashlib.blake2b(d.pixels.tobytes(), digest_size=8).hexdigest()
        assert d.note is None


def test_corrupt_file_gets_an_error_not_an_exception(decoded):
    d = decoded[CORRUPT]
    assert d.pixels is None and d.pixel_hash is None
    assert isinstance(d.error, str) and d.error  # the decoder's message (Pillow's wording)
    assert (
        d.content_hash
        == hashlib.sha1(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10).hexdigest()[:16]
    )


def test_missing_file_gets_an_error(folder):
    out = read_and_decode(
        folder, [ImageFile("Forest", "Forest", "Forest/gone.png", b"Forest/gone.png")]
    )
    assert out == [
        DecodedImage(
            "", 0, 0, 0, "", None, "file not found (removed, or a broken symbolic link)", None
        )
    ]


@pytest.mark.parametrize(
    "data",
    [b"", b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, bytes(range(256)) * 4],
)
def test_decode_bytes_never_raises(data):
    d = decode_image_bytes(data)
    assert d.pixels is None and d.error and d.pixel_hash is None
    assert d.size_bytes == len(data)


def test_lossless_pixels_are_exact(decoded):
    np.testing.assert_array_equal(decoded["Forest/a.png"].pixels, np.asarray(_rgb(1)))
    np.testing.assert_array_equal(decoded["Forest/c.bmp"].pixels, np.asarray(_rgb(3)))
    np.testing.assert_array_equal(decoded["Forest/d.tif"].pixels, np.asarray(_rgb(4)))
    np.testing.assert_array_equal(decoded["Forest/e.webp"].pixels, np.asarray(_rgb(5)))


def test_jpeg_pixels_are_close(decoded):
    px = decoded["Forest/b.jpg"].pixels.astype(int)
    assert np.abs(px - np.array([200, 30, 40])).max() <= 4


def test_grey_image_is_replicated_to_three_channels(decoded):
    d = decoded["Forest/grey.png"]
    assert d.mode == "L"
    ref = np.tile(np.arange(64, dtype=np.uint8)[None, :] * 4, (64, 1))
    for c in range(3):
        np.testing.assert_array_equal(d.pixels[..., c], ref)


def test_rgba_is_composited_over_white(decoded):
    d = decoded["Sea Lake/rgba.png"]
    assert d.mode == "RGBA"
    px = d.pixels.astype(int)
    assert (px[:, :32] == 255).all()  # fully transparent -> white
    assert (px[1:, 32:] == np.array([10, 20, 30])).all()  # opaque unchanged
    # half-transparent black over white: about 127
    assert np.abs(px[0, 40] - 127).max() <= 1


def test_palette_image_matches_its_rgb_conversion(decoded):
    d = decoded["Sea Lake/palette.png"]
    assert d.mode == "P"
    ref = np.asarray(_rgb(7).quantize(colors=16).convert("RGB"))
    np.testing.assert_array_equal(d.pixels, ref)


def test_sixteen_bit_png_is_mapped_by_bit_depth(decoded):
    d = decoded["Sea Lake/sixteen.png"]
    assert d.mode.startswith("I")
    ref = np.round(U16.astype(np.float64) / 257).astype(np.uint8)  # never stretched
    for c in range(3):
        np.testing.assert_array_equal(d.pixels[..., c], ref)


def test_wide_image_is_resized_whole(decoded):
    d = decoded["Sea Lake/wide.jpeg"]
    assert (d.width, d.height) == (200, 100)
    px = d.pixels.astype(int)
    # left band (20/200 of the width -> ~6.4 of 64 columns) survives the resize
    assert (px[:, :5, 1] > 200).all() and (px[:, :5, 0] < 60).all()
    assert np.abs(px[:, 10:] - 128).max() <= 12


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[:32] = (255, 0, 0)  # top red
    arr[32:] = (0, 0, 255)  # bottom blue
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "o.jpg"
    img.save(path, "JPEG", quality=95, exif=exif)
    d = decode_image_bytes(path.read_bytes())
    px = d.pixels.astype(int)
    # after rotating 90 degrees clockwise, the red top becomes the right half
    assert px[32, 60, 0] > 200 and px[32, 60, 2] < 60
    assert px[32, 3, 2] > 200 and px[32, 3, 0] < 60


def _decoded_as_before(data: bytes) -> np.ndarray:
    """The pixels as decoding took them before it skipped exif_transpose's and convert's
    copies of an image they leave as it is."""
    from PIL import ImageOps

    from dedup_assets.core.data.image_folder import IMAGE_SIZE, RESAMPLE, SIXTEEN_BIT_MODES

    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        img = ImageOps.exif_transpose(opened)
        if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
            arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
            arr = (
                np.clip(arr, 0.0, 1.0) * 255.0 if img.mode == "F" else np.clip(arr, 0, 65535) / 257
            )
            img = Image.fromarray(arr.round().astype(np.uint8))
        if img.mode == "P":
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA"):
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img.convert("RGBA"))
        rgb = img.convert("RGB")
        if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
            rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), RESAMPLE)
        return np.asarray(rgb, dtype=np.uint8).copy()


@pytest.mark.parametrize("orientation", [None, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "I;16", "F", "CMYK"])
def test_every_orientation_and_mode_decodes_as_exif_transpose_and_convert_did(
    tmp_path, orientation, mode
):
    """Upright images are no longer copied by exif_transpose and convert: the pixels are
    what those copies gave, for every EXIF orientation (none, upright, the seven turns, out
    of range) and the modes decoding converts, in a non-square image (a turn shows)."""
    rng = np.random.default_rng(sum(map(ord, mode)))
    base = Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8))
    if mode in ("I;16", "F"):
        grey = rng.random((40, 70))
        img = (
            Image.fromarray((grey * 65535).astype(np.uint16))
            if mode == "I;16"
            else Image.fromarray(grey.astype(np.float32))
        )
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode in ("RGB", "L", "CMYK") else ("TIFF" if mode in ("F", "CMYK") else "PNG")
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buffer, fmt, exif=exif)
    data = buffer.getvalue()
    d = decode_image_bytes(data)
    assert d.error is None, d.error
    np.testing.assert_array_equal(d.pixels, _decoded_as_before(data))
    if orientation in (5, 6, 7, 8):  # a quarter turn: the stored image was taken turned
        with Image.open(io.BytesIO(data)) as opened:
            assert opened.getexif().get(0x0112) == orientation
        buffer = io.BytesIO()
        img.save(buffer, fmt)
        assert not np.array_equal(d.pixels, decode_image_bytes(buffer.getvalue()).pixels)


def test_byte_identical_files_get_suffixed_ids(decoded):
    h1 = decoded["Sea Lake/copy1.png"].content_hash
    h2 = decoded["Sea Lake/copy2.png"].content_hash
    assert h1 == h2
    rels = list(decoded)
    hashes = [decoded[r].content_hash for r in rels]
    ids = dict(zip(rels, unique_ids(hashes, rels), strict=True))
    assert ids["Sea Lake/copy1.png"] == h1
    assert ids["Sea Lake/copy2.png"] == f"{h1}-2"
    assert len(set(ids.values())) == len(ids)


def test_unique_ids_are_independent_of_input_order():
    hashes = ["bbb", "aaa", "bbb", "ccc", "bbb", "aaa"]
    paths = ["c/3.png", "a/1.png", "a/9.png", "z/z.png", "b/0.png", "q/q.png"]
    expected = {
        "a/9.png": "bbb",
        "b/0.png": "bbb-2",
        "c/3.png": "bbb-3",
        "a/1.png": "aaa",
        "q/q.png": "aaa-2",
        "z/z.png": "ccc",
    }
    assert dict(zip(paths, unique_ids(hashes, paths), strict=True)) == expected
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = rng.permutation(len(paths))
        h = [hashes[i] for i in perm]
        p = [paths[i] for i in perm]
        assert dict(zip(p, unique_ids(h, p), strict=True)) == expected


CLASS_NAMES = [
    "Sea Lake",
    "a|b",
    "x...y",
    "a,b[1]",
    "Ünïcode",
    "tab\tname",
    "Forest",
    "a/b",
    "50%",
    "~home",
    "..",
    ".",
    "a:b*c?",
    "new\nline",
    "snake_case-name",
    "-leading-dash",
    "\"quoted\" 'name'",
    "猫と犬",
]


def _assert_safe_key(key: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_%~-]{1,64}", key), key
    for bad in ("...", "|", ",", ".", "/", "\n", "\t", "\0"):
        assert bad not in key, (key, bad)


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_class_key_round_trips_and_is_safe(name):
    key = class_key(name)
    _assert_safe_key(key)
    assert "~" not in key  # short names are never hashed
    assert unquote_to_bytes(key) == name.encode()
    assert class_key(name.encode()) == key


def test_class_keys_are_distinct():
    keys = [class_key(n) for n in CLASS_NAMES]
    assert len(set(keys)) == len(keys)
    assert class_key("Forest") == "Forest"
    assert class_key("snake_case-name") == "snake_case-name"
    assert class_key("-leading-dash") == "-leading-dash"
    assert class_key("Sea Lake") == "Sea%20Lake"
    assert class_key("..") == "%2E%2E"
    assert class_key("~home") == "%7Ehome"
    assert class_key("a|b") == "a%7Cb"
    assert class_key(b"cls\xff") == "cls%FF"


def test_class_key_length_boundary():
    assert class_key("a" * 64) == "a" * 64
    long = "a" * 65
    assert class_key(long) == "a" * 40 + "~" + hashlib.sha1(long.encode()).hexdigest()[:16]
    # a short encoded name is kept whole: 21 bytes -> 63 characters
    assert class_key(b"\xff" * 21) == "%FF" * 21
    assert class_key(b"\xff" * 22) == "%FF" * 13 + "~" + hashlib.sha1(b"\xff" * 22).hexdigest()[:16]


def test_long_cjk_class_names_get_distinct_short_keys():
    a, b = "猫" * 29 + "犬", "猫" * 29 + "鳥"  # 30 characters, 90 bytes, 270 encoded
    ka, kb = class_key(a), class_key(b)
    assert ka != kb
    # 40 characters would end in "%E7%": the prefix stops before the cut triple
    prefix = "%E7%8C%AB" * 4 + "%E7"
    assert ka == prefix + "~" + hashlib.sha1(a.encode()).hexdigest()[:16]
    assert kb == prefix + "~" + hashlib.sha1(b.encode()).hexdigest()[:16]
    for key in (ka, kb):
        _assert_safe_key(key)
        assert len(key) <= 64


@pytest.mark.parametrize("lead", range(4))
def test_hashed_class_key_never_cuts_a_percent_triple(lead):
    raw = ("x" * lead + "猫" * 40).encode()
    key = class_key(raw)
    _assert_safe_key(key)
    prefix, digest = key.split("~")
    assert digest == hashlib.sha1(raw).hexdigest()[:16]
    assert re.fullmatch(r"x*(?:%[0-9A-F]{2})*", prefix), prefix
    assert 38 <= len(prefix) <= 40
    assert raw.startswith(unquote_to_bytes(prefix))


def test_class_key_rejects_an_empty_name():
    with pytest.raises(ValueError):
        class_key("")


def test_known_callback_short_circuits_decoding(folder):
    files = scan_image_folder(folder).files
    sentinel = DecodedImage("sentinel", 0, 1, 1, "X", None, "cached", None)
    calls: list[tuple[str, int]] = []
    target = next(f for f in files if f.rel_path == "Forest/a.png")
    target_hash = hashlib.sha1((folder / target.rel_path).read_bytes()).hexdigest()[:16]

    def known(content_hash: str, size: int) -> DecodedImage | None:
        calls.append((content_hash, size))
        return sentinel if content_hash == target_hash else None

    out = read_and_decode(folder, files, known=known, workers=1)
    assert len(calls) == len(files)
    got = dict(zip([f.rel_path for f in files], out, strict=True))
    assert got["Forest/a.png"] is sentinel
    # a corrupt file is also offered to the cache (it has bytes), then decoded
    assert got[CORRUPT].error and got[CORRUPT] is not sentinel
    assert got["Forest/c.bmp"].pixels is not None
    sizes = {h: s for h, s in calls}
    assert sizes[target_hash] == (folder / "Forest/a.png").stat().st_size


def test_thread_pool_keeps_input_order(tmp_path):
    root = tmp_path
    (root / "k").mkdir()
    for i in range(70):
        Image.new("RGB", (64, 64), (i, 255 - i, (3 * i) % 256)).save(root / "k" / f"{i:03d}.png")
    files = scan_image_folder(root).files
    assert len(files) == 70
    out = read_and_decode(root, files, workers=4)
    for i, d in enumerate(out):
        assert tuple(d.pixels[0, 0]) == (i, 255 - i, (3 * i) % 256)


# --- robust, lossless reading of the source folder ---------------------------------------


def _png(seed: int, **save) -> bytes:
    buf = io.BytesIO()
    _rgb(seed).save(buf, "PNG", **save)
    return buf.getvalue()


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fail instead of hanging: SIGALRM interrupts a blocking open or read."""

    def expired(signum, frame):
        pytest.fail(f"still running after {seconds} s")  # not an OSError: nothing catches it

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def special(tmp_path) -> Path:
    """A class folder with a FIFO, links to a device, a folder, nothing, and a real image."""
    root = tmp_path / "src"
    cls = root / "c"
    cls.mkdir(parents=True)
    (cls / "real.png").write_bytes(_png(1))
    os.mkfifo(cls / "x.jpg")
    (cls / "zero.png").symlink_to("/dev/zero")
    (cls / "gone.png").symlink_to(cls / "missing.png")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "hidden_from_scan.png").write_bytes(_png(2))
    (cls / "dir.jpg").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "outside.png").write_bytes(_png(3))
    (cls / "link.png").symlink_to(tmp_path / "outside.png")
    (cls / "self.png").symlink_to("self.png")  # a loop
    return root


def test_scan_lists_only_regular_files_and_links_to_them(special):
    with _deadline(5):
        t0 = time.perf_counter()
        scan = scan_image_folder(special)
        elapsed = time.perf_counter() - t0
    assert elapsed < 1.0
    assert [f.rel_path for f in scan.files] == ["c/link.png", "c/real.png"]
    assert {s.path: s.reason for s in scan.skipped} == {
        "c/dir.jpg": "symbolic link to a folder inside a class folder: not followed",
        "c/gone.png": "broken symbolic link (its target does not exist): skipped",
        "c/self.png": (
            "symbolic link could not be followed (Too many levels of symbolic links): skipped"
        ),
        "c/x.jpg": "not a regular file (FIFO): skipped",
        "c/zero.png": "symbolic link to a character device, not a regular file: skipped",
    }
    assert all(s.class_name == "c" for s in scan.skipped)
    out = read_and_decode(special, scan.files, workers=1)
    np.testing.assert_array_equal(out[0].pixels, np.asarray(_rgb(3)))  # through the link
    np.testing.assert_array_equal(out[1].pixels, np.asarray(_rgb(1)))


def test_read_source_file_rejects_a_fifo_and_a_device_at_once(special):
    cases = {
        "c/x.jpg": "not a regular file (FIFO)",
        "c/zero.png": "not a regular file (character device)",
        "c/dir.jpg": "not a regular file (folder)",
        "c/gone.png": "file not found (removed, or a broken symbolic link)",
        "c/self.png": "file could not be opened: Too many levels of symbolic links",
    }
    with _deadline(5):
        t0 = time.perf_counter()
        for rel, reason in cases.items():
            with pytest.raises(SourceFileError) as info:
                read_source_file(special / rel, DEFAULT_MAX_FILE_BYTES)
            assert str(info.value) == reason
        elapsed = time.perf_counter() - t0
    assert elapsed < 1.0
    assert read_source_file(special / "c/link.png", 10**6) == _png(3)


def test_read_errors_come_back_as_decoded_errors(special):
    # Files that changed after the scan: read_and_decode never raises, with or without a cache.
    files = [
        ImageFile("c", "c", rel, os.fsencode(rel))
        for rel in ["c/x.jpg", "c/real.png", "c/zero.png", "c/dir.jpg", "c/gone.png"]
    ]
    offered: list[tuple[str, int]] = []
    with _deadline(5):
        plain = read_and_decode(special, files, workers=1)
        cached = read_and_decode(
            special, files, workers=1, known=lambda h, s: offered.append((h, s))
        )
    for out in (plain, cached):
        assert [d.error for d in out] == [
            "not a regular file (FIFO)",
            None,
            "not a regular file (character device)",
            "not a regular file (folder)",
            "file not found (removed, or a broken symbolic link)",
        ]
        for d in out[:1] + out[2:]:
            assert d == DecodedImage("", 0, 0, 0, "", None, d.error, None)
        np.testing.assert_array_equal(out[1].pixels, np.asarray(_rgb(1)))
    # only the readable file is offered to the cache
    data = _png(1)
    assert offered == [(hashlib.sha1(data).hexdigest()[:16], len(data))]


def test_read_source_file_size_limit(tmp_path):
    path = tmp_path / "f.png"
    path.write_bytes(b"x" * 100)
    assert read_source_file(path, 100) == b"x" * 100
    with pytest.raises(SourceFileError) as info:
        read_source_file(path, 99)
    assert str(info.value) == "larger than the limit of 99 bytes (max_file_bytes)"
    files = [ImageFile("c", "c", "f.png", b"f.png")]
    (d,) = read_and_decode(tmp_path, files, max_file_bytes=99)
    assert d.error == "larger than the limit of 99 bytes (max_file_bytes)" and d.pixels is None
    (d,) = read_and_decode(tmp_path, files, max_file_bytes=99, known=lambda h, s: None)
    assert d.error == "larger than the limit of 99 bytes (max_file_bytes)"


def test_read_source_file_stops_one_byte_past_the_limit(tmp_path, monkeypatch):
    # A file that grows after fstat is still cut off: at most max_bytes + 1 bytes are read.
    path = tmp_path / "grows.png"
    path.write_bytes(b"y" * 5000)
    real_fstat, real_read = os.fstat, os.read
    requested: list[int] = []

    def small_fstat(fd):
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, *st[1:6], 10, *st[7:]))

    def counting_read(fd, n):
        requested.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "fstat", small_fstat)
    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(SourceFileError, match="larger than the limit of 1000 bytes"):
        read_source_file(path, 1000)
    assert requested[0] == 11 and sum(requested) == 1001


def test_unreadable_class_folder_is_reported(tmp_path, monkeypatch):
    # Tests run as root, so permission errors are simulated at os.scandir.
    for rel in ["ok/a.png", "locked/b.png", "ok/deep/inner/c.png", "ok/deep/d.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(_png(4))
    denied = {os.fsencode(tmp_path / "locked"), os.fsencode(tmp_path / "ok/deep/inner")}
    real_scandir = os.scandir

    def scandir(path):
        if path in denied:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_image_folder(tmp_path)
    assert [f.rel_path for f in scan.files] == ["ok/a.png", "ok/deep/d.png"]
    assert scan.skipped == [
        SkippedPath("locked", b"locked", "locked", "folder could not be read: Permission denied"),
        SkippedPath(
            "ok/deep/inner",
            b"ok/deep/inner",
            "ok",
            "folder could not be read: Permission denied",
        ),
    ]


def test_unreadable_root_raises_a_clear_error(tmp_path, monkeypatch):
    real_scandir = os.scandir
    root = os.fsencode(tmp_path)

    def scandir(path):
        if path == root:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError, match=r"could not be read: Permission denied"):
        scan_image_folder(tmp_path)


def test_symlinked_class_folder_is_followed_but_not_links_inside(tmp_path):
    data = tmp_path / "data"
    (data / "real" / "sub").mkdir(parents=True)
    (data / "real" / "a.png").write_bytes(_png(5))
    (data / "real" / "sub" / "b.png").write_bytes(_png(6))
    root = tmp_path / "src"
    root.mkdir()
    (root / "linked").symlink_to(data / "real", target_is_directory=True)
    (root / "own").mkdir()
    (root / "own" / "c.png").write_bytes(_png(7))
    (root / "own" / "loop").symlink_to(root, target_is_directory=True)
    (root / "own" / "x.jpg").mkdir()  # a real folder named like an image: a nested folder
    (root / "own" / "x.jpg" / "d.png").write_bytes(_png(8))
    scan = scan_image_folder(root)
    assert [(f.class_name, f.rel_path) for f in scan.files] == [
        ("linked", "linked/a.png"),
        ("linked", "linked/sub/b.png"),
        ("own", "own/c.png"),
        ("own", "own/x.jpg/d.png"),
    ]
    assert scan.skipped == [
        SkippedPath(
            "own/loop",
            b"own/loop",
            "own",
            "symbolic link to a folder inside a class folder: not followed",
        )
    ]
    out = read_and_decode(root, scan.files)
    np.testing.assert_array_equal(out[1].pixels, np.asarray(_rgb(6)))


def test_non_utf8_names_are_read_losslessly(tmp_path):
    root = os.fsencode(tmp_path)
    os.mkdir(os.path.join(root, b"cls\xff"))
    with open(os.path.join(root, b"cls\xff", b"img\xfe.png"), "wb") as fh:
        fh.write(_png(9))
    with open(os.path.join(root, b"cls\xff", b"notes\xfa.t\xfbt"), "wb") as fh:
        fh.write(b"text")
    with open(os.path.join(root, b"top\xff.png"), "wb") as fh:
        fh.write(_png(9))
    for scan in (
        scan_image_folder(root),
        scan_image_folder(tmp_path),
        scan_image_folder(str(tmp_path)),
    ):
        (f,) = scan.files
        assert f == ImageFile("cls\\xff", "cls%FF", "cls\\xff/img\\xfe.png", b"cls\xff/img\xfe.png")
        assert [(s.path, s.raw_path, s.class_name) for s in scan.skipped] == [
            ("cls\\xff/notes\\xfa.t\\xfbt", b"cls\xff/notes\xfa.t\xfbt", "cls\\xff"),
            ("top\\xff.png", b"top\xff.png", None),
        ]
        assert scan.skipped[0].reason == (
            "file extension '.t\\xfbt' is not an image extension: skipped"
        )
        for text in (f.rel_path, f.class_name, *(s.path for s in scan.skipped)):
            text.encode("utf-8")  # strict: valid UTF-8 for parquet and CSV
    with open(f.source_path(tmp_path), "rb") as fh:
        assert fh.read() == _png(9)
    assert os.fsencode(f.source_path(root)) == os.path.join(root, b"cls\xff", b"img\xfe.png")
    (d,) = read_and_decode(tmp_path, [f])
    np.testing.assert_array_equal(d.pixels, np.asarray(_rgb(9)))


AWKWARD_NAMES = [
    "with space.png",
    "comma,name.png",
    "\"double\" and 'single'.png",
    "new\nline.png",
    "100%.png",
    "-rf.png",
    "a" * 251 + ".png",  # 255 bytes, the usual limit
    "猫" * 80 + ".png",  # 244 bytes
    "back\\slash.png",
]


def test_any_file_name_is_found_and_read(tmp_path):
    cls_name = "猫" * 85  # 255 bytes
    classes = [cls_name, '-dash class, "q"', "50%"]
    for k, cls in enumerate(classes):
        (tmp_path / cls).mkdir()
        for i, name in enumerate(AWKWARD_NAMES):
            (tmp_path / cls / name).write_bytes(_png(100 * k + i))
    scan = scan_image_folder(tmp_path)
    assert scan.skipped == []
    expected = sorted(f"{cls}/{name}" for cls in classes for name in AWKWARD_NAMES)
    assert [f.rel_path for f in scan.files] == sorted(expected, key=os.fsencode)
    assert {f.class_key for f in scan.files} == {class_key(c) for c in classes}
    for f in scan.files:
        assert f.raw_path == os.fsencode(f.rel_path)
        assert f.class_name in classes and len(f.class_key) <= 64
    out = read_and_decode(tmp_path, scan.files)
    for f, d in zip(scan.files, out, strict=True):
        cls, name = f.rel_path.split("/", 1)
        seed = 100 * classes.index(cls) + AWKWARD_NAMES.index(name)
        np.testing.assert_array_equal(d.pixels, np.asarray(_rgb(seed)), err_msg=f.rel_path)


def _frames() -> list[Image.Image]:
    return [_flat((255, 0, 0)), _flat((0, 255, 0)), _flat((0, 0, 255))]


@pytest.mark.parametrize(
    ("fmt", "save"),
    [("GIF", {"loop": 0}), ("PNG", {}), ("WEBP", {"lossless": True})],
)
def test_animated_image_uses_the_first_frame(fmt, save):
    frames = _frames()
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, **save)
    d = decode_image_bytes(buf.getvalue())
    assert d.error is None
    assert d.note == "animated image (3 frames): the first frame was used"
    assert (d.pixels == np.array([255, 0, 0], dtype=np.uint8)).all()
    assert d.pixel_hash == pixel_hash(np.asarray(frames[0]))


def test_multi_page_tiff_and_still_gif_notes(tmp_path):
    frames = _frames()
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:2])
    d = decode_image_bytes(buf.getvalue())
    assert d.note == "multi-frame image (2 frames): the first frame was used"
    assert (d.pixels == np.array([255, 0, 0], dtype=np.uint8)).all()
    (tmp_path / "c").mkdir()
    frames[1].save(tmp_path / "c" / "still.gif", "GIF")
    scan = scan_image_folder(tmp_path)
    assert [f.rel_path for f in scan.files] == ["c/still.gif"]
    (d,) = read_and_decode(tmp_path, scan.files)
    assert d.note is None and (d.pixels == np.array([0, 255, 0], dtype=np.uint8)).all()


def test_pixel_hash_identifies_identical_decoded_pixels():
    fast, small = _png(20, compress_level=0), _png(20, compress_level=9)
    assert fast != small
    a, b = decode_image_bytes(fast), decode_image_bytes(small)
    assert a.content_hash != b.content_hash
    assert a.pixel_hash == b.pixel_hash == pixel_hash(np.asarray(_rgb(20)))
    assert re.fullmatch(r"[0-9a-f]{16}", a.pixel_hash)
    other = decode_image_bytes(_png(21))
    assert other.pixel_hash != a.pixel_hash
    # one changed value is a different image
    arr = np.asarray(_rgb(20)).copy()
    arr[5, 5, 1] ^= 1
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    assert decode_image_bytes(buf.getvalue()).pixel_hash != a.pixel_hash


def _worker_deadline() -> None:
    """In a worker: be killed by SIGALRM instead of hanging the test (timers are not forked)."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, 20)


def test_worker_processes_keep_order_and_apply_the_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(image_folder, "PROCESS_POOL_MIN_FILES", 2)
    monkeypatch.setattr(image_folder, "CHUNK_FILES", 3)
    pools: list[int] = []

    class RecordingPool(image_folder.ProcessPoolExecutor):
        def __init__(self, max_workers=None, **kwargs):
            pools.append(max_workers)
            super().__init__(max_workers=max_workers, initializer=_worker_deadline, **kwargs)

    monkeypatch.setattr(image_folder, "ProcessPoolExecutor", RecordingPool)
    (tmp_path / "k").mkdir()
    files = []
    for i in range(7):
        name = f"k/{i}.png"
        _flat((10 * i, 100, 200)).save(tmp_path / name, "PNG")  # about 200 bytes each
        files.append(ImageFile("k", "k", name, name.encode()))
    (tmp_path / "k" / "4.png").write_bytes(_png(34))  # noise: over 12 kB
    os.mkfifo(tmp_path / "k" / "fifo.png")
    files.insert(2, ImageFile("k", "k", "k/fifo.png", b"k/fifo.png"))
    limit = 10_000
    with _deadline(30):
        out = read_and_decode(tmp_path, files, workers=2, max_file_bytes=limit)
    assert pools == [2]  # the files were read by worker processes
    assert [d.error for d in out] == [
        None,
        None,
        "not a regular file (FIFO)",
        None,
        None,
        "larger than the limit of 10000 bytes (max_file_bytes)",
        None,
        None,
    ]
    colours = [0, 1, None, 2, 3, None, 5, 6]
    for i, d in zip(colours, out, strict=True):
        if i is not None:
            assert (d.pixels == np.array([10 * i, 100, 200], dtype=np.uint8)).all()
    # the same files in-process give the same results
    assert [d.error for d in read_and_decode(tmp_path, files, workers=1, max_file_bytes=limit)] == [
        d.error for d in out
    ]


def test_very_large_images_get_a_note_or_a_reason_not_a_stray_warning():
    """Above Pillow's decompression-bomb size an image was decoded with a warning on stderr
    naming no file; above twice that it was quarantined with Pillow's words. The first gets a
    note, the second a reason that says what the limit is (a fresh interpreter: pytest
    resets warning filters)."""
    code = """
import io
from PIL import Image
from dedup_assets.core.data.image_folder import decode_image_bytes
Image.MAX_IMAGE_PIXELS = 1000
def png(side):
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()
large = decode_image_bytes(png(40))  # 1,600 pixels: above 1,000, below 2,000
refused = decode_image_bytes(png(50))  # 2,500 pixels
print(large.error, "|", large.note, "|", refused.pixels is None, "|", refused.error)
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    error, note, no_pixels, reason = done.stdout.strip().split(" | ")
    assert error == "None" and note.startswith("very large image") and no_pixels == "True"
    assert reason.startswith("image too large to decode safely: more than 0 megapixels")
    from dedup_assets.core.data.image_folder import reason_kind

    assert reason_kind(reason) == "too large"  # counted as unreadable, as a corrupt file
