"""Tests for reading a labelled ImageFolder (dedup_assets.core.image_folder)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dedup_assets.core.image_folder import (
    DecodedImage,
    ImageFile,
    class_key,
    class_name_from_key,
    decode_image_bytes,
    read_and_decode,
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
    return root


def test_scan_finds_exactly_the_image_files(folder):
    files = scan_image_folder(folder)
    expected = sorted([*VALID, CORRUPT])
    assert [f.rel_path for f in files] == expected
    for f in files:
        assert f.class_name == f.rel_path.split("/")[0]
    assert {f.class_name for f in files} == {"Forest", "Sea Lake"}
    nested = next(f for f in files if "nested" in f.rel_path)
    assert nested.class_name == "Forest"


def test_scan_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_image_folder(tmp_path / "nope")


@pytest.fixture(scope="module")
def decoded(folder) -> dict[str, DecodedImage]:
    files = scan_image_folder(folder)
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


def test_corrupt_file_gets_an_error_not_an_exception(decoded):
    d = decoded[CORRUPT]
    assert d.pixels is None
    assert isinstance(d.error, str) and d.error


def test_missing_file_gets_an_error(folder):
    out = read_and_decode(folder, [ImageFile("Forest", "Forest/gone.png")])
    assert len(out) == 1 and out[0].pixels is None and out[0].error


@pytest.mark.parametrize(
    "data",
    [b"", b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, bytes(range(256)) * 4],
)
def test_decode_bytes_never_raises(data):
    d = decode_image_bytes(data)
    assert d.pixels is None and d.error
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


def test_sixteen_bit_png_is_rescaled_to_full_range(decoded):
    d = decoded["Sea Lake/sixteen.png"]
    assert d.mode.startswith("I")
    a = U16.astype(np.float64)
    ref = np.round((a - a.min()) * 255.0 / (a.max() - a.min())).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(d.pixels[..., c], ref)
    assert d.pixels.min() == 0 and d.pixels.max() == 255


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
]


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_class_key_round_trips_and_is_safe(name):
    key = class_key(name)
    assert class_name_from_key(key) == name
    assert re.fullmatch(r"[A-Za-z0-9_%-]+", key), key
    assert "..." not in key and "|" not in key and "," not in key


def test_class_keys_are_distinct():
    keys = [class_key(n) for n in CLASS_NAMES]
    assert len(set(keys)) == len(keys)
    assert class_key("Forest") == "Forest"
    assert class_key("snake_case-name") == "snake_case-name"


def test_known_callback_short_circuits_decoding(folder):
    files = scan_image_folder(folder)
    sentinel = DecodedImage("sentinel", 0, 1, 1, "X", None, "cached")
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
    files = scan_image_folder(root)
    assert len(files) == 70
    out = read_and_decode(root, files, workers=4)
    for i, d in enumerate(out):
        assert tuple(d.pixels[0, 0]) == (i, 255 - i, (3 * i) % 256)
