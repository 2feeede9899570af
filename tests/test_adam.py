"""The training loop's Adam (dedup_assets.core.model.adam): on the CPU it moves every
parameter to the same bits as `torch.optim.Adam` (the optimizer it replaces, minus the 1.4 s
import of `torch._dynamo` its construction costs), over many steps, with parameters that
skip a step, and with gradients zeroed in place; it refuses what it cannot optimize; and a
process that trains the autoencoder never imports `torch._dynamo`."""

import numpy as np
import pytest
import torch
from conftest import run_python
from torch import nn

from dedup_assets.core.model.adam import Adam
from dedup_assets.core.model.autoencoder import ConvAutoencoder

STEPS = 12  # bias corrections change at every step; the first ones change the most


def _pair(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = ConvAutoencoder().to(memory_format=torch.channels_last)
    b = ConvAutoencoder().to(memory_format=torch.channels_last)
    b.load_state_dict(a.state_dict())
    return a, b


def _same_bits(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.parametrize(("lr", "set_to_none"), [(1e-3, True), (3e-4, False)])
def test_the_same_bits_as_torch_adam_over_many_steps(lr, set_to_none):
    ours_model, theirs_model = _pair(seed=7)
    ours = Adam(ours_model.parameters(), lr=lr)
    theirs = torch.optim.Adam(theirs_model.parameters(), lr=lr)
    rng = np.random.default_rng(1)
    for _ in range(STEPS):
        x = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32))
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad(set_to_none=set_to_none)
            nn.functional.mse_loss(model(x), x).backward()
            opt.step()
        _same_bits(ours_model, theirs_model)
    assert ours.steps == [STEPS] * len(ours.params)
    # The training moved the parameters: the comparison compared something.
    fresh, _ = _pair(seed=7)
    moved = [
        not torch.equal(p, q)
        for p, q in zip(ours_model.parameters(), fresh.parameters(), strict=True)
    ]
    assert all(moved)


def test_a_parameter_without_a_gradient_is_left_alone_and_keeps_its_own_count():
    torch.manual_seed(0)
    ours_layers = [nn.Linear(5, 5), nn.Linear(5, 5)]
    theirs_layers = [nn.Linear(5, 5), nn.Linear(5, 5)]
    for a, b in zip(ours_layers, theirs_layers, strict=True):
        b.load_state_dict(a.state_dict())
    ours = Adam([p for m in ours_layers for p in m.parameters()], lr=0.01)
    theirs = torch.optim.Adam([p for m in theirs_layers for p in m.parameters()], lr=0.01)
    x = torch.randn(3, 5)
    for step in range(6):
        for layers, opt in ((ours_layers, ours), (theirs_layers, theirs)):
            opt.zero_grad()
            # The second layer takes part every other step only.
            y = layers[0](x) if step % 2 else layers[1](layers[0](x))
            y.pow(2).sum().backward()
            opt.step()
        for a, b in zip(ours_layers, theirs_layers, strict=True):
            for p, q in zip(a.parameters(), b.parameters(), strict=True):
                assert torch.equal(p, q)
    assert ours.steps == [6, 6, 3, 3]


def test_what_it_refuses():
    layer = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        Adam(layer.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="betas"):
        Adam(layer.parameters(), lr=1e-3, betas=(0.9, 1.0))
    layer.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter"):
        Adam(layer.parameters(), lr=1e-3)


def test_training_the_autoencoder_does_not_import_torch_dynamo():
    code = (
        "import sys, numpy as np\n"
        "from dedup_assets.core.model.autoencoder import train_autoencoder\n"
        "pixels = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)\n"
        "result = train_autoencoder(pixels, epochs=1, batch_size=4)\n"
        "assert len(result.epoch_losses) == 1\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    assert run_python(code).strip() == "False"
