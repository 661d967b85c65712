"""Classifier guidance with a noise-aware classifier, against Dhariwal and Nichol's formula, without ComfyUI."""
from __future__ import annotations

import math

import pytest
import torch

from gaussian import GaussianDenoiser, eps_noise_scaling, flow_noise_scaling, sigmas_eps
from guidance.noise_aware_classifier import NoiseAwareClassifier, NoiseAwareClassifierLoss, linear_alphas_cumprod
from samplers import cost
from samplers.parameterization import alpha_bar, noise_coefficients
from samplers.terms import GuidanceTerm
from samplers.guide import Guide
from samplers.methods.ugd import guided_x0
from samplers.settings import Settings
from samplers.universal_guidance import sample_universal_guidance

ALPHAS_CUMPROD = linear_alphas_cumprod()
SCHEDULE_SIGMAS = ((1 - ALPHAS_CUMPROD) / ALPHAS_CUMPROD).sqrt()
SHAPE = (2, 3, 4, 4)


class LinearTimedClassifier(torch.nn.Module):
    """logits = (W·z)·(1 + t/1000): closed form, and it depends on t, so a wrong timestep shows."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, math.prod(SHAPE[1:]), generator=torch.Generator().manual_seed(1)))
        self.seen_t = []

    def forward(self, z, t):
        self.seen_t.append(t.detach().clone())
        return (z.flatten(1) @ self.weight.T) * (1 + t[:, None] / 1000)


def classifier():
    return NoiseAwareClassifier(LinearTimedClassifier(), SHAPE[1:], ALPHAS_CUMPROD, [f"class {i}" for i in range(5)])


def test_the_classifier_reads_its_own_schedules_timestep():
    c = classifier()
    torch.testing.assert_close(c.timestep(SCHEDULE_SIGMAS[[0, 300, 999]]), torch.tensor([0.0, 300.0, 999.0]))
    # halfway in log σ between two steps is halfway in t; beyond the schedule's ends it stays at them
    between = ((SCHEDULE_SIGMAS[300].log() + SCHEDULE_SIGMAS[301].log()) / 2).exp()
    assert c.timestep(between).item() == pytest.approx(300.5, abs=1e-3)
    assert c.timestep(torch.tensor([1e-6, 1e6])).tolist() == [0.0, 999.0]


@pytest.mark.parametrize("noise_scaling, t", [(eps_noise_scaling, 300), (flow_noise_scaling, 600)])
@pytest.mark.parametrize("gradient", ["through_unet", "x0_only"])
def test_classifier_guidance_is_dhariwal_and_nichols_step(noise_scaling, t, gradient):
    """ε̂' = ε̂ − s·√(1 − ᾱ_t)·∇_{z_t} log p(y | z_t, t) with the paper schedule's w as the classifier scale s."""
    torch.manual_seed(0)
    denoiser, c, y, w = GaussianDenoiser(noise_scaling), classifier(), 2, 3.0
    # the level whose b/a is the schedule's σ at t, so that the classifier must be told t itself
    ratio = SCHEDULE_SIGMAS[t].item()
    sigma = ratio if noise_scaling is eps_noise_scaling else ratio / (1 + ratio)
    a, b = noise_coefficients(noise_scaling, sigma)
    x = torch.randn(SHAPE) * math.hypot(a, b)
    sigma_vec = torch.full((SHAPE[0],), sigma)

    ab, r = alpha_bar(a, b), math.hypot(a, b)
    z = (x / r).requires_grad_(True)
    log_p = torch.log_softmax(c.network(z, torch.full((SHAPE[0],), float(t))), dim=1)[:, y]
    (grad_log_p,) = torch.autograd.grad(log_p.sum(), z)
    x0 = denoiser(x, sigma_vec)
    eps = (z.detach() - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    eps_guided = eps - w * math.sqrt(1 - ab) * grad_log_p
    expected = (z.detach() - math.sqrt(1 - ab) * eps_guided) / math.sqrt(ab)

    loss = NoiseAwareClassifierLoss(c, y)
    guided = GuidanceTerm(name="classifier guidance", loss=loss, weight=w)
    c.network.seen_t.clear()
    guide = Guide(denoiser, lambda x0: pytest.fail("classifier guidance must not decode"), gradient=gradient)
    ours = guided_x0(guide, x, sigma_vec, [(guided, loss.bind("cpu"))], a, b)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, x0), "the guidance must move x0"
    torch.testing.assert_close(c.network.seen_t[0], torch.full((SHAPE[0],), float(t)), atol=1e-3, rtol=0)


def test_classifier_guidance_raises_the_target_class_over_a_run():
    torch.manual_seed(0)
    denoiser, c, y = GaussianDenoiser(eps_noise_scaling), classifier(), 4
    sigmas = sigmas_eps(8)
    noise = torch.randn(SHAPE) * sigmas[0]

    def final_probability(weight):
        guidance = (GuidanceTerm(name="classifier", loss=NoiseAwareClassifierLoss(c, y), weight=weight),)
        x = sample_universal_guidance(denoiser, noise.clone(), sigmas, guidance=guidance,
                                      decode=lambda x0: pytest.fail("no decode"), noise_scaling=eps_noise_scaling,
                                      disable=True)
        return torch.softmax(c.network(x, torch.zeros(SHAPE[0])), dim=1)[:, y]

    guided, unguided = final_probability(1.0), final_probability(0.0)
    assert (guided >= unguided - 1e-3).all() and guided.mean() > unguided.mean() + 0.2


def test_it_takes_no_backward_guidance_and_checks_the_latent():
    loss = NoiseAwareClassifierLoss(classifier(), 1)
    with pytest.raises(ValueError, match="backward_steps to 0"):
        GuidanceTerm(name="classifier", loss=loss, weight=1.0, backward_steps=1)
    loss.check_noisy_input(SHAPE)
    with pytest.raises(ValueError, match=r"3-channel 4×4 image.*Empty Pixel Image"):
        loss.check_noisy_input((2, 4, 8, 8))
    with pytest.raises(ValueError, match="3 target classes for a batch of 2"):
        NoiseAwareClassifierLoss(classifier(), [0, 1, 2]).check_noisy_input(SHAPE)


def test_its_count_has_no_denoiser_backward_and_no_decoder():
    counts = cost.counted_passes(5, [{"weight": 1.0, "reads_noisy_input": True}], Settings(recurrence=2))
    assert counts.forward["denoiser"] == 10 and counts.backward["denoiser"] == 0
    assert counts.forward["decoder"] == 0 and counts.forward["guidance_network"] == 10
    with_decoded = cost.counted_passes(5, [{"weight": 1.0}], Settings(recurrence=2))
    assert with_decoded.backward["denoiser"] == 10 and with_decoded.forward["decoder"] == 10
