"""Tests for the paper's Table 1 autoencoder (dedup_assets.core.model.autoencoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dedup_assets.core.model.autoencoder import (
    LATENT_DIM,
    TABLE_1,
    TOTAL_PARAMETERS,
    ConvAutoencoder,
    encode_images,
    layer_table,
    load_state,
    save_state,
    to_unit_range,
    train_autoencoder,
)

# The paper's Table 1, written out here independently of the module's copy.
PAPER_TABLE_1 = [
    ("Conv2d-1", (32, 32, 32), 896),
    ("Conv2d-3", (64, 16, 16), 18_496),
    ("Conv2d-5", (128, 8, 8), 73_856),
    ("Conv2d-7", (256, 4, 4), 295_168),
    ("Conv2d-9", (256, 2, 2), 590_080),
    ("ConvTranspose2d-11", (256, 4, 4), 590_080),
    ("ConvTranspose2d-13", (128, 8, 8), 295_040),
    ("ConvTranspose2d-15", (64, 16, 16), 73_792),
    ("ConvTranspose2d-17", (32, 32, 32), 18_464),
    ("ConvTranspose2d-19", (3, 64, 64), 867),
]


def _smooth_images(n: int, seed: int = 0) -> np.ndarray:
    """Random but structured uint8 images (n, 64, 64, 3): oriented colour gradients."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64) / 63.0
    out = np.empty((n, 64, 64, 3), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(-1.0, 1.0, size=(3, 3))
        img = 0.5 + 0.5 * np.tanh(a * xx[..., None] + b * yy[..., None] + c)
        out[i] = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def model() -> ConvAutoencoder:
    torch.manual_seed(0)
    return ConvAutoencoder().eval()


@pytest.fixture(scope="module")
def trained():
    pixels = _smooth_images(32)
    return pixels, train_autoencoder(pixels, epochs=3, batch_size=16, learning_rate=2e-3, seed=7)


def test_layer_table_matches_paper_table_1(model):
    rows = layer_table(model)
    assert rows == PAPER_TABLE_1
    assert list(TABLE_1) == PAPER_TABLE_1


def test_total_parameter_count(model):
    total = sum(p.numel() for p in model.parameters())
    assert total == 1_956_739
    assert TOTAL_PARAMETERS == 1_956_739
    assert sum(r[2] for r in layer_table(model)) == 1_956_739


def test_layer_kernels_strides_padding(model):
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 5 and len(deconvs) == 5
    for m in convs:
        assert (m.kernel_size, m.stride, m.padding) == ((3, 3), (2, 2), (1, 1))
    for m in deconvs:
        assert (m.kernel_size, m.stride, m.padding, m.output_padding) == (
            (3, 3),
            (2, 2),
            (1, 1),
            (1, 1),
        )
    assert isinstance(model.decoder[-1], torch.nn.Tanh)


def test_encoder_output_flattens_to_1024(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        raw = model.encoder(x)
        z = model.encode(x)
    assert raw.shape == (2, 256, 2, 2)
    assert z.shape == (2, LATENT_DIM) == (2, 1024)
    torch.testing.assert_close(z, raw.reshape(2, -1), rtol=0, atol=0)
    # post-ReLU latents are non-negative
    assert float(z.min()) >= 0.0


def test_decoder_output_shape_and_range(model):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        y = model(x)
        y_big = model(x * 50.0)
    assert y.shape == (2, 3, 64, 64)
    for out in (y, y_big):
        assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0


def test_to_unit_range_maps_endpoints_and_returns_nchw():
    batch = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    batch[0, 5, 7, 1] = 255
    batch[1, :, :, 2] = 255
    batch[1, 0, 0, 0] = 128
    x = to_unit_range(torch.from_numpy(batch))
    assert x.shape == (2, 3, 64, 64)
    assert x.dtype == torch.float32
    assert float(x[0, 1, 5, 7]) == 1.0  # NHWC (0, 5, 7, 1) -> NCHW (0, 1, 5, 7)
    assert float(x[0, 0, 5, 7]) == -1.0
    assert float(x[0].sum()) == -(3 * 64 * 64) + 2.0  # all -1 except one +1
    assert bool((x[1, 2] == 1.0).all())
    assert float(x[1, 0, 0, 0]) == pytest.approx(128 / 127.5 - 1.0, abs=1e-7)
    # the values equal the reference permutation
    ref = torch.from_numpy(batch).permute(0, 3, 1, 2).double() / 127.5 - 1.0
    torch.testing.assert_close(x.double(), ref, rtol=0, atol=1e-6)


def test_training_lowers_the_loss(trained):
    _, result = trained
    losses = result.epoch_losses
    assert len(losses) == 3
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.98 * losses[0]
    assert result.images_seen == 3 * 32
    assert result.precision == "fp32"


def test_training_is_reproducible_with_a_seed(trained):
    pixels, first = trained
    second = train_autoencoder(pixels, epochs=3, batch_size=16, learning_rate=2e-3, seed=7)
    assert second.epoch_losses == first.epoch_losses
    z1 = encode_images(first.model, pixels[:8])
    z2 = encode_images(second.model, pixels[:8])
    np.testing.assert_array_equal(z1, z2)


def test_encode_images_matches_model_encode(trained):
    pixels, result = trained
    z = encode_images(result.model, pixels[:10], batch_size=3)
    assert z.shape == (10, 1024) and z.dtype == np.float32
    with torch.no_grad():
        ref = result.model.encode(to_unit_range(torch.from_numpy(pixels[:10]))).numpy()
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(trained, tmp_path):
    pixels, result = trained
    path = tmp_path / "ae.pt"
    save_state(result.model, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert set(state) == set(result.model.state_dict())
    loaded = load_state(path)
    assert not loaded.training
    np.testing.assert_array_equal(
        encode_images(loaded, pixels[:6]), encode_images(result.model, pixels[:6])
    )
    # Loaded again, the same file gives the model this process holds; a file written since
    # (a model trained again) is read anew, whatever its name.
    assert load_state(path) is loaded
    other = ConvAutoencoder()
    save_state(other, path)
    again = load_state(path)
    assert again is not loaded
    np.testing.assert_array_equal(
        encode_images(again, pixels[:6]), encode_images(other.eval(), pixels[:6])
    )


@pytest.mark.parametrize(
    "shape",
    [(4, 64, 64), (4, 3, 64, 64), (4, 32, 32, 3), (4, 64, 64, 1), (4, 64, 64, 4)],
)
def test_train_rejects_wrong_shape(shape):
    with pytest.raises(ValueError):
        train_autoencoder(np.zeros(shape, dtype=np.uint8), epochs=1)


def test_train_rejects_zero_images():
    with pytest.raises(ValueError):
        train_autoencoder(np.zeros((0, 64, 64, 3), dtype=np.uint8), epochs=1)


# ------------------------------------------------------------------ invariant training


@pytest.fixture(scope="module")
def textures() -> np.ndarray:
    """96 images of random 8x8-pixel colour cells (uint8 NHWC): a 3-pixel shift moves every
    cell edge, so a code that follows pixels moves with it."""
    cells = np.random.default_rng(0).integers(0, 256, (96, 8, 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(cells, 8, axis=1), 8, axis=2)


def _shift(pixels: np.ndarray, dx: int = 3) -> np.ndarray:
    """Shift right by dx pixels, repeating the first columns (a near-duplicate)."""
    return np.concatenate([np.repeat(pixels[:, :, :1], dx, axis=2), pixels[:, :, :-dx]], axis=2)


def _shifted_pair_similarity(model: ConvAutoencoder, pixels: np.ndarray) -> tuple[float, float]:
    """Mean cosine of each image's code to its shifted copy's (codes centred on their mean),
    and the mean margin of that over the nearest other image's shifted copy."""
    a, b = encode_images(model, pixels), encode_images(model, _shift(pixels))
    centre = np.concatenate([a, b]).mean(axis=0)
    a, b = a - centre, b - centre
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    sim = a @ b.T
    own = np.diag(sim).copy()
    np.fill_diagonal(sim, -np.inf)
    return float(own.mean()), float((own - sim.max(axis=1)).mean())


def test_invariant_objective_brings_a_shifted_pair_closer_than_plain(textures):
    from dedup_assets.core.model.autoencoder import TrainingObjective

    kwargs = dict(epochs=4, batch_size=32, learning_rate=2e-3, seed=3)
    plain = train_autoencoder(textures, objective=TrainingObjective.plain, **kwargs)
    invariant = train_autoencoder(textures, objective=TrainingObjective.invariant, **kwargs)
    assert invariant.objective == "invariant" and plain.objective == "plain"
    assert invariant.images_seen == plain.images_seen == 4 * 96
    own_plain, margin_plain = _shifted_pair_similarity(plain.model, textures)
    own_inv, margin_inv = _shifted_pair_similarity(invariant.model, textures)
    # Measured: plain 0.78 / 0.25, invariant 0.95 / 0.46 (seed 3; seed 4 alike).
    assert own_inv > own_plain + 0.1, (own_plain, own_inv)
    assert margin_inv > margin_plain + 0.05, (margin_plain, margin_inv)
    # It still reconstructs: the decoder is trained on the clean image.
    assert invariant.epoch_losses[-1] < invariant.epoch_losses[0]
    assert sum(p.numel() for p in invariant.model.parameters()) == TOTAL_PARAMETERS


def test_contrastive_loss_is_low_for_matching_views_and_high_for_shuffled():
    from dedup_assets.core.model.autoencoder import contrastive_loss

    z = torch.randn(16, 1024, generator=torch.Generator().manual_seed(0))
    matched = contrastive_loss(z, z + 0.01 * torch.randn(16, 1024), 0.1)
    shuffled = contrastive_loss(z, z.roll(1, dims=0), 0.1)
    assert float(matched) < 0.01 and float(shuffled) > 5.0


def test_early_stopping_stops_when_the_held_out_loss_stalls(textures):
    from dedup_assets.core.model.autoencoder import EarlyStopping

    # A gain of 90% per check is never reached: it stops after `patience` checks.
    rule = EarlyStopping(max_epochs=50, check_every=64, patience=2, min_delta=0.9, min_holdout=8)
    result = train_autoencoder(textures, batch_size=16, seed=1, early_stopping=rule)
    assert len(result.holdout_losses) == 3  # the first check sets the best; two fail to beat it
    assert "improved by less than 90% in 2 checks" in result.stopped_because
    held_out = 8  # 5% of 96 is 5, raised to min_holdout
    assert result.images_seen < 50 * (96 - held_out)
    assert result.holdout_losses[0][0] == 64 and result.images_seen == result.holdout_losses[-1][0]
    # With too few images for a held-out slice, the epochs limit applies and it says so.
    few = train_autoencoder(textures[:10], batch_size=16, early_stopping=rule)
    assert few.images_seen == 50 * 10 and "too few images" in few.stopped_because
    # A budget of images stops it first (checks still run every 64 images).
    budget = EarlyStopping(max_epochs=50, check_every=64, patience=99, max_images=100)
    capped = train_autoencoder(textures, batch_size=16, seed=1, early_stopping=budget)
    assert 100 <= capped.images_seen < 100 + 16
    assert capped.stopped_because == "reached the budget of 100 training images"
    # Without early stopping: exactly the epochs asked for.
    fixed = train_autoencoder(textures[:10], epochs=2, batch_size=16)
    assert fixed.images_seen == 20 and fixed.holdout_losses == []


def test_invariant_loss_variants_train_and_refuse_unknown_views():
    """views="one" contrasts an augmented view with the image itself; with clean_grad off
    the clean code is a target only, so the encoder gets a different gradient."""
    from dedup_assets.core.model.autoencoder import ConvAutoencoder, InvariantLoss, to_unit_range

    x = to_unit_range(
        torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), np.uint8))
    )
    grads = []
    for loss_fn in (InvariantLoss(views="one"), InvariantLoss(views="one", clean_grad=False)):
        torch.manual_seed(0)
        model = ConvAutoencoder()
        g = torch.Generator().manual_seed(1)
        loss = loss_fn(model, x, g, lambda: torch.autocast("cpu", enabled=False))
        loss.backward()
        assert torch.isfinite(loss)
        grads.append(model.encoder[0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])
    with pytest.raises(ValueError, match="views must be"):
        InvariantLoss(views="three")


def test_a_small_batch_is_encoded_on_one_thread_and_the_setting_restored(monkeypatch):
    import dedup_assets.core.model.autoencoder as ae

    seen = []
    real = ae.ConvAutoencoder.encode

    def spy(self, x):
        seen.append(torch.get_num_threads())
        return real(self, x)

    monkeypatch.setattr(ae.ConvAutoencoder, "encode", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = ae.ConvAutoencoder().eval()
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
        big = rng.integers(0, 256, (ae.SMALL_BATCH, 64, 64, 3), dtype=np.uint8)
        z_small = ae.encode_images(model, small)
        assert seen == [1] and torch.get_num_threads() == 2
        ae.encode_images(model, big, batch_size=ae.SMALL_BATCH)
        assert seen == [1, 2] and torch.get_num_threads() == 2
        # The same vectors as on two threads, to float precision.
        big[:3] = small
        assert np.allclose(ae.encode_images(model, big)[:3], z_small, atol=1e-5)
    finally:
        torch.set_num_threads(before)
