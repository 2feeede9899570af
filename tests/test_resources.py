"""Resources: device and precision choice, settings validated at construction."""

import pytest
import torch
from pydantic import ValidationError

from resources import ComputeDevice, DedupSettings
from resources.compute_device import DeviceUnavailable


def test_auto_device_is_cpu_without_cuda_and_explicit_cuda_fails_clearly():
    if torch.cuda.is_available():
        assert ComputeDevice(device="auto").torch_device().type == "cuda"
    else:
        assert ComputeDevice(device="auto").torch_device() == torch.device("cpu")
        with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
            ComputeDevice(device="cuda").torch_device()
    with pytest.raises(ValidationError, match="device"):
        ComputeDevice(device="gpu0")


def test_precision_choice():
    assert ComputeDevice(device="cpu", precision="fp32").amp_dtype() is None
    dev = ComputeDevice(device="cpu", precision="auto")
    assert dev.amp_dtype() == (torch.bfloat16 if dev.supports_bf16() else None)
    with pytest.raises(ValidationError, match="precision"):
        ComputeDevice(precision="fp8")
    assert "cpu" in ComputeDevice(device="cpu", precision="fp32").describe()


def test_settings_are_validated_at_construction_and_auto_epochs():
    s = DedupSettings()
    assert s.training_images == 12_288
    assert s.resolved_epochs(27_000) == 1  # a budget of 12,288 images: less than an epoch
    assert s.resolved_epochs(416) == 30  # 12,288 / 416 = 29.5, rounded up
    assert DedupSettings(training_images=100).resolved_epochs(0) == 100
    assert DedupSettings(epochs=3).resolved_epochs(27_000) == 3
    assert DedupSettings(similarity_space="raw").similarity_space == "raw"
    for bad in (
        {"similarity_space": "l2"},
        {"keep_policy": "random"},
        {"bin_rule": "x"},
        {"epochs": -1},
        {"training_images": 0},
        {"batch_size": 0},
        {"learning_rate": 0.0},
        {"n_components": 0},
        {"kurtosis_tolerance": -0.5},
        {"clean_copy_mode": "move"},
    ):
        with pytest.raises(ValidationError):
            DedupSettings(**bad)


def test_a_run_lists_its_source_once_and_keeps_that_snapshot(tmp_path):
    """Inside `one_listing_per_run` every listing of a source is its first one (a file added
    meanwhile waits for the next run); outside, and for another source, each lists anew."""
    from resources.image_source import ImageSource, one_listing_per_run, release_listings

    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        (tmp_path / "src" / name / "x.png").write_bytes(b"x")
    (tmp_path / "other" / "c").mkdir(parents=True)
    source = ImageSource(root=str(tmp_path / "src"))

    def files(s: ImageSource) -> int:
        return sum(v.files for v in s.list_source()[1].values())

    with one_listing_per_run():
        assert files(source) == 2
        (tmp_path / "src" / "a" / "y.png").write_bytes(b"y")
        assert files(source) == 2 and files(ImageSource(root=str(tmp_path / "src"))) == 2
        assert files(ImageSource(root=str(tmp_path / "other"))) == 0
        source.list_source()[1].clear()  # a caller's change to its dict is its own
        assert files(source) == 2
        release_listings()  # the snapshot let go early: each lists anew
        assert files(source) == 3
        (tmp_path / "src" / "a" / "z.png").write_bytes(b"z")
        assert files(source) == 4
    assert files(source) == 4


@pytest.mark.parametrize("hidden", [False, True])
def test_a_run_lists_its_source_from_the_scan_it_was_given(tmp_path, hidden):
    """`one_listing_per_run((root, include_hidden, scan))`: the first listing of that source
    is that scan (a file added since waits for the next run), with the same classes, files,
    skipped entries and digests as a listing taken when the scan was; another reading of
    the source (hidden entries, another folder, a split source) lists anew."""
    from dedup_assets.core.data.image_folder import scan_image_folder
    from dedup_assets.core.data.source_index import list_source
    from resources.image_source import ImageSource, one_listing_per_run

    src = tmp_path / "src"
    for name in ("Forêt é [x]", "b", ".hidden"):
        (src / name).mkdir(parents=True)
        (src / name / "é 1.png").write_bytes(b"x")
    (src / "b" / "notes.txt").write_text("not an image")
    (src / "b" / ".x.png").write_bytes(b"h")
    scan = scan_image_folder(src, include_hidden=hidden)
    then = list_source(src, include_hidden=hidden)[1]
    (src / "b" / "new.png").write_bytes(b"n")  # after the scan
    now = list_source(src, include_hidden=hidden)[1]
    assert now["b"].digest != then["b"].digest

    def listing(include_hidden: bool, root=src) -> dict:
        return ImageSource(root=str(root), include_hidden=include_hidden).list_source()[1]

    with one_listing_per_run((src.resolve(), hidden, scan)):
        assert listing(hidden) == then
        assert listing(not hidden) == list_source(src, include_hidden=not hidden)[1]
    with one_listing_per_run((src.resolve(), hidden, scan)):  # the other reading first
        assert listing(not hidden) != then
        assert listing(hidden) == then
    assert listing(hidden) == now  # outside: anew

    # A split source: the unsplit scan of its root is not its listing.
    split = tmp_path / "split"
    for part in ("train", "test"):
        (split / part / "cats").mkdir(parents=True)
        (split / part / "cats" / "1.png").write_bytes(part.encode())
    unsplit = scan_image_folder(split)
    with one_listing_per_run((split.resolve(), False, unsplit)):
        assert (
            set(listing(False, split))
            == set(list_source(split)[1])
            == {
                "train.cats",
                "test.cats",
            }
        )
