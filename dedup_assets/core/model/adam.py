"""Adam (Kingma and Ba, 2015) as the training loop uses it: plain first and second moments,
no weight decay, no AMSGrad.

`torch.optim.Adam` imports `torch._dynamo` the first time an optimizer is built (its
methods are wrapped to keep the compiler out), which costs 1.3 s in every process that
trains: a sixth of a small run (`benchmarks/bench_optimizer_start.py`). This is its
arithmetic, each operation over every parameter at once (`torch._foreach_*`): on the CPU a
model trains to the same bits as with `torch.optim.Adam` (`tests/test_adam.py`), on CUDA
an operation is one kernel launch for all parameters, and on any device it is this code.
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
        """One update of every parameter that has a gradient: each operation over all of
        them at once (`torch._foreach_*`, what torch.optim's foreach path calls: one kernel
        launch per operation on CUDA, the per-tensor arithmetic on the CPU)."""
        beta1, beta2 = self.betas
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        grads = [p.grad for p in params]
        exp_avg = [self.exp_avg[i] for i in live]
        exp_avg_sq = [self.exp_avg_sq[i] for i in live]
        for i in live:
            self.steps[i] += 1
        steps = [self.steps[i] for i in live]
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, [(1 - beta2**t) ** 0.5 for t in steps])
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, [-self.lr / (1 - beta1**t) for t in steps])
