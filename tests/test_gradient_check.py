"""A model patch that blocks the guidance gradient through the denoiser is named at the first guided step, and a
loss that is merely flat is not blamed on the model."""
from __future__ import annotations

import pytest
import torch

from gaussian import GaussianDenoiser, eps_noise_scaling, sigmas_eps
from samplers.gradient_check import GuidanceBlocked
from samplers.settings import Settings
from samplers.terms import GuidanceTerm
from samplers.universal_guidance import sample_universal_guidance
from test_engine import TargetLoss, decode


class NaNGradient(torch.autograd.Function):
    """The identity whose backward pass gives NaN: what an overflowing per-call weight cast does."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


PATCHES = {
    "missing": lambda x0: x0.detach(),
    "zero": lambda x0: x0.detach() + 0 * x0,
    "not finite": NaNGradient.apply,
}


class FlatLoss(TargetLoss):
    def bind(self, device):
        return lambda image: (image * 0).flatten(1).sum(1)


def run(patch, loss, gradient="through_unet", update_mask=None):
    denoiser = GaussianDenoiser(eps_noise_scaling)
    x = torch.randn(2, 2, 4, 5, generator=torch.Generator().manual_seed(0)) * 10
    term = GuidanceTerm(name="test guidance", loss=loss, weight=1.0)
    return sample_universal_guidance(lambda x_in, sigma: patch(denoiser(x_in, sigma)), x, sigmas_eps(4),
                                     guidance=(term,), decode=decode, noise_scaling=eps_noise_scaling,
                                     settings=Settings(gradient=gradient), update_mask=update_mask)


@pytest.mark.parametrize("what", PATCHES)
def test_a_blocked_gradient_through_the_model_stops_the_run_naming_the_patch_and_the_fix(what):
    with pytest.raises(GuidanceBlocked, match=f"through the model is {what}.*patches the MODEL.*x0_only"):
        run(PATCHES[what], TargetLoss(torch.rand(2, 3, 4, 5)))


@pytest.mark.parametrize("what", ["zero", "not finite"])
def test_x0_only_does_not_go_through_the_model_and_so_is_not_blocked(what):
    assert torch.isfinite(run(PATCHES[what], TargetLoss(torch.rand(2, 3, 4, 5)), gradient="x0_only")).all()


def test_a_flat_loss_through_a_healthy_model_is_not_blamed_on_the_model():
    assert torch.isfinite(run(lambda x0: x0, FlatLoss(None))).all()


def test_a_zero_gradient_under_a_noise_mask_is_a_warning_once_as_the_mask_may_keep_every_cell(caplog):
    mask = torch.ones(2, 2, 4, 5)
    x = run(PATCHES["zero"], TargetLoss(torch.rand(2, 3, 4, 5)), update_mask=mask)
    assert torch.isfinite(x).all()
    assert [r.getMessage() for r in caplog.records].count(next(
        r.getMessage() for r in caplog.records if "gradient through the model is zero" in r.getMessage())) == 1
