"""The reconstruction errors of images new since training, stored per class as the class
run encodes them (`core.model.new_image_errors`) and read back by the retraining rule
instead of reconstructing its sample after every update."""

import numpy as np
import pytest
import torch

from dedup_assets.core.model.autoencoder import (
    ConvAutoencoder,
    encode_images,
    reconstruct,
    reconstruction_errors,
)
from dedup_assets.core.model.new_image_errors import (
    mean_error,
    read_new_image_errors,
    update_new_image_errors,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ConvAutoencoder()


@pytest.mark.parametrize("n", [1, 2, 37])
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_errors_from_the_latents_are_those_of_the_whole_model(model, n, amp):
    """Decoding the images' own latents (the class run) gives the errors of encoding and
    decoding them (the rule's fallback), bit for bit; in fp32 their mean is the error
    `reconstruct` gives the training log."""
    pixels = np.random.default_rng(n).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    whole = reconstruction_errors(model, pixels, amp_dtype=amp)
    latents = encode_images(model, pixels, amp_dtype=amp)
    halves = reconstruction_errors(model, pixels, amp_dtype=amp, latents=latents)
    assert whole.shape == (n,) and whole.dtype == np.float32
    if n == 1:  # a lone image is encoded beside a copy of itself: kernels may differ by CPU
        np.testing.assert_allclose(whole, halves, rtol=1e-5)
    else:
        np.testing.assert_array_equal(whole, halves)
    if amp is None:
        assert whole.mean() == pytest.approx(reconstruct(model, pixels)[1], rel=1e-6)


def test_stored_errors_are_kept_computed_once_and_tied_to_the_model(tmp_path):
    path = tmp_path / "c.new_errors.npz"
    calls: list[list[str]] = []

    def compute(ids):
        calls.append(list(ids))
        return np.array([len(i) for i in ids], dtype=np.float32)

    ids = ["a", "bb", "ccc é"]
    assert update_new_image_errors(path, "m1", ids, compute) == 3
    assert read_new_image_errors(path, "m1") == {"a": 1.0, "bb": 2.0, "ccc é": 5.0}
    # One more new image: only it is computed; one gone: dropped.
    assert update_new_image_errors(path, "m1", ["bb", "ccc é", "dddd"], compute) == 1
    assert calls[-1] == ["dddd"]
    assert read_new_image_errors(path, "m1") == {"bb": 2.0, "ccc é": 5.0, "dddd": 4.0}
    # Another model: nothing stored counts, every image computed again.
    assert read_new_image_errors(path, "m2") == {}
    assert update_new_image_errors(path, "m2", ["bb"], compute) == 1
    # Nothing new since training: no file.
    assert update_new_image_errors(path, "m2", [], compute) == 0
    assert not path.exists() and read_new_image_errors(path, "m2") == {}
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    assert read_new_image_errors(tmp_path / "broken.npz", "m1") == {}


@pytest.mark.parametrize("stored_share", [0.0, 0.5, 1.0])
def test_the_mean_error_reads_what_is_stored_and_computes_the_rest(stored_share):
    ids = [f"i{k}" for k in range(10)]
    truth = {i: float(k) for k, i in enumerate(ids)}
    stored = {i: truth[i] for i in ids[: int(stored_share * len(ids))]}
    asked: list[list[str]] = []

    def compute(missing):
        asked.append(list(missing))
        return np.array([truth[i] for i in missing])

    assert mean_error(ids, [stored, {}], compute) == pytest.approx(4.5)
    assert asked == ([] if stored_share == 1.0 else [ids[len(stored) :]])
    assert np.isnan(mean_error([], [], compute))


def test_errors_are_keyed_by_model_and_precision():
    from dedup_assets.core.model.new_image_errors import errors_key

    assert errors_key("m1") == errors_key("m1", None) == "m1/fp32"
    assert errors_key("m1", torch.bfloat16) == "m1/bfloat16"
    assert len({errors_key("m1"), errors_key("m2"), errors_key("m1", torch.bfloat16)}) == 3


def test_a_removed_class_takes_its_stored_errors_along(tmp_path):
    from dedup_assets.assets.catalog import remove_class_outputs
    from dedup_assets.core.data.layout import OutputLayout

    layout = OutputLayout(tmp_path)
    layout.new_image_errors("gone").parent.mkdir(parents=True)
    update_new_image_errors(layout.new_image_errors("gone"), "m1", ["a"], lambda ids: [1.0])
    update_new_image_errors(layout.new_image_errors("kept"), "m1", ["b"], lambda ids: [1.0])
    remove_class_outputs(layout, "gone")
    assert not layout.new_image_errors("gone").exists() and layout.new_image_errors("kept").exists()
