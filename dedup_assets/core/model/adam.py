"""Adam (Kingma and Ba, 2015) as the training loop uses it: plain first and second moments,
no weight decay, no AMSGrad.

`torch.optim.Adam` imports `torch._dynamo` the first time an optimizer is built (its
methods are wrapped to keep the compiler out), which costs 1.4 s in every process that
trains: a sixth of a small run. This is the arithmetic of its single-tensor path, in the
same order, so on the CPU a model trains to the same bits as with `torch.optim.Adam`
(`tests/test_adam.py`); on any device it is the same code.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

BETAS = (0.9, 0.999)
EPS = 1e-8


class Adam:
    """Adam over `params` (the ones that require a gradient) with learning rate `lr`."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = BETAS,
        eps: float = EPS,
    ) -> None:
        if not lr > 0.0:
            raise ValueError(f"the learning rate must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("Adam got no parameter that requires a gradient")
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.steps = [0] * len(self.params)  # per parameter, as torch counts them
        self.exp_avg = [
            torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params
        ]
        self.exp_avg_sq = [
            torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params
        ]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (drop them, or zero them in place)."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        beta1, beta2 = self.betas
        for i, (p, m, v) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True)):
            if p.grad is None:
                continue
            self.steps[i] += 1
            step_size = self.lr / (1 - beta1 ** self.steps[i])
            bias_correction2_sqrt = (1 - beta2 ** self.steps[i]) ** 0.5
            g = p.grad
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-step_size)
