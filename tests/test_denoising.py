"""The denoising loss shared by the prior and the conditional models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffdecon import training
from diffdecon.denoising import denoising_loss, training_step, v_target


def test_denoising_loss_against_hand_computed_values():
    abar = torch.tensor([0.9, 0.36, 0.01])
    x0, eps = torch.ones(2, 1, 4, 4), torch.full((2, 1, 4, 4), 2.0)
    t = torch.tensor([1, 1])
    seen = {}

    def zero_net(x_t, t_):
        seen["x_t"] = x_t
        return torch.zeros_like(x_t)

    # Default approx tolerance (rel 1e-6): the values below are exact up to float32 rounding (~1e-7).
    # epsilon: mean (0 - 2)^2 = 4; x_t = 0.6 * 1 + 0.8 * 2 = 2.2
    assert float(denoising_loss(zero_net, abar, x0, t, eps, "epsilon")) == pytest.approx(4.0)
    torch.testing.assert_close(seen["x_t"], torch.full_like(x0, 2.2))
    # v = 0.6 * 2 - 0.8 * 1 = 0.4: loss 0.16
    torch.testing.assert_close(v_target(x0, eps, abar[t].view(-1, 1, 1, 1)), torch.full_like(x0, 0.4))
    assert float(denoising_loss(zero_net, abar, x0, t, eps, "v")) == pytest.approx(0.16)
    with pytest.raises(ValueError, match="epsilon, v"):
        denoising_loss(zero_net, abar, x0, t, eps, "x0")


class _ScaleNet(torch.nn.Module):
    """A one-parameter stand-in for a diffusers UNet: output ``.sample = w * x_t``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x_t, t):
        return SimpleNamespace(sample=self.w * x_t)


def test_training_step_returns_the_loss_and_takes_one_optimizer_step():
    g = torch.Generator().manual_seed(0)
    abar = torch.tensor([0.9, 0.36])
    x0 = torch.randn(3, 1, 4, 4, generator=g)
    eps = torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, 1])
    model = _ScaleNet()
    expected = denoising_loss(lambda x_t, t_: 0.5 * x_t, abar, x0, t, eps)
    w = model.w.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(denoising_loss(lambda x_t, t_: w * x_t, abar, x0, t, eps), w)
    loss = training_step(model, torch.optim.SGD(model.parameters(), lr=0.1), abar, x0, t, eps)
    # Same float32 operations in the same order: equal to float32 rounding (rtol 1e-6).
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(model.w.detach()) == pytest.approx(0.5 - 0.1 * float(grad), rel=1e-6)  # plain SGD: w - lr * grad


def test_training_module_keeps_the_loss_names():
    # Code that imported the loss from diffdecon.training before it had its own module.
    assert training.denoising_loss is denoising_loss
    assert training.training_step is training_step
    assert training.v_target is v_target
