"""Weights made under inference mode, as ComfyUI makes them, become usable for backward passes."""
from __future__ import annotations

import pytest
import torch

from samplers.autograd_safety import clone_saved_activations, is_inplace_autograd_error, make_autograd_safe


class InplaceResidual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.register_buffer("offset", torch.ones(4))

    def forward(self, x):
        h = self.a(x)
        h += self.b(h * h)  # the 2024 ComfyUI UNet's `x += n`; `h * h` saved h for backward
        return torch.tanh(h) + self.offset


def _input_gradient(module, x):
    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(module(x).sum(), x)
    return grad


def test_inference_weights_fail_backward_until_made_safe():
    with torch.inference_mode():
        module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        _input_gradient(module, x)
    assert make_autograd_safe(module) == 4
    assert torch.isfinite(_input_gradient(module, x)).all()
    assert not any(p.requires_grad for p in module.parameters())
    assert make_autograd_safe(module) == 0  # a second run finds nothing to replace
    with torch.inference_mode():
        module(x)  # still usable by ComfyUI afterwards


def test_clone_on_pack_gives_the_out_of_place_gradient():
    torch.manual_seed(0)
    module = InplaceResidual().requires_grad_(False)
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError) as error:
        _input_gradient(module, x)
    assert is_inplace_autograd_error(error.value)
    with clone_saved_activations():
        grad = _input_gradient(module, x)

    def out_of_place(x):
        h = module.a(x)
        return torch.tanh(h + module.b(h * h)) + module.offset

    with torch.enable_grad():
        y = x.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(out_of_place(y).sum(), y)
    torch.testing.assert_close(grad, expected)
