"""Each method of the training-free family against its own paper's update rule, written in the papers' DDPM
notation (z = x/√(a²+b²), ᾱ, α_t = ᾱ_t/ᾱ_{t−1}) on the closed-form Gaussian denoiser."""
from __future__ import annotations

import math

import pytest
import torch

from gaussian import GaussianDenoiser, eps_noise_scaling, flow_noise_scaling
from samplers.methods import METHODS
from samplers.parameterization import alpha_bar, noise_coefficients
from samplers.settings import Settings
from samplers.terms import GuidanceTerm
from samplers.universal_guidance import sample_universal_guidance

# (noise scaling, three noise levels): the first step of a two-step run is checked
LEVELS = [(eps_noise_scaling, (2.5, 1.1, 0.0)), (flow_noise_scaling, (0.7, 0.45, 0.0))]
TARGET = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))


def decode(x0):
    return torch.sigmoid(torch.cat([x0, x0[:, :1] * 0.5], dim=1))


def loss(image):
    return ((image - TARGET) ** 2).flatten(1).sum(1)


class Loss:
    def check(self, batch, height, width):
        pass

    def bind(self, device):
        return loss


def first_step(method, noise_scaling, sigmas, x, sampling=(), **settings):
    """x after the first step of `method` (DDIM, one pass), with one guidance term of `settings` and the sampler's
    `sampling` options."""
    seen = []
    sample_universal_guidance(GaussianDenoiser(noise_scaling), x.clone(), torch.tensor(sigmas),
                              guidance=[GuidanceTerm(name="test", loss=Loss(), **settings)], decode=decode,
                              noise_scaling=noise_scaling, settings=Settings(method=method, **dict(sampling)),
                              disable=True, callback=lambda info: seen.append(info["x"].clone()))
    return seen[0]


class Papers:
    """The quantities of the papers' equations at the first step, with autograd through the denoiser."""

    def __init__(self, noise_scaling, sigmas, x):
        self.denoiser, self.sigma = GaussianDenoiser(noise_scaling), torch.full((x.shape[0],), sigmas[0])
        coefficients = [noise_coefficients(noise_scaling, s) for s in sigmas]
        (a, b), (a1, b1) = coefficients[0], coefficients[1]
        self.r, self.r1 = math.hypot(a, b), math.hypot(a1, b1)
        self.ab, self.ab1 = alpha_bar(a, b), alpha_bar(a1, b1)
        self.alphas = [alpha_bar(*coefficients[i]) / alpha_bar(*coefficients[i + 1]) for i in range(2)]
        self.z = (x / self.r).requires_grad_(True)
        self.x0 = self.denoiser(self.z * self.r, self.sigma)
        self.eps = (self.z - math.sqrt(self.ab) * self.x0) / math.sqrt(1 - self.ab)

    def ddim(self, x0=None, eps=None):
        x0 = self.x0 if x0 is None else x0
        eps = self.eps if eps is None else eps
        return (math.sqrt(self.ab1) * x0 + math.sqrt(1 - self.ab1) * eps).detach()

    def grad_z(self, fn=loss):
        return torch.autograd.grad(fn(decode(self.x0)).sum(), self.z, retain_graph=True)[0]

    def mean_guidance(self, mu, steps):
        x0 = self.x0.detach()
        for _ in range(steps):
            leaf = x0.clone().requires_grad_(True)
            x0 = x0 - mu * torch.autograd.grad(loss(decode(leaf)).sum(), leaf)[0]
        return x0 - self.x0.detach()


def rms(t):
    return t.pow(2).flatten(1).mean(1).sqrt().reshape(-1, 1, 1, 1)


def start(noise_scaling, sigmas):
    a, b = noise_coefficients(noise_scaling, sigmas[0])
    return torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * b + a * 0.3


@pytest.mark.parametrize("noise_scaling, sigmas", LEVELS)
def test_freedom_steps_x_prev_by_its_noise_sized_rho(noise_scaling, sigmas):
    x, rho = start(noise_scaling, sigmas), 0.05
    p = Papers(noise_scaling, sigmas, x)
    g = p.grad_z()
    c_t = math.sqrt(p.ab1) * (1 - p.alphas[0]) / (1 - p.ab)
    rho_t = rho * rms(p.eps.detach()) * math.sqrt(1 - p.ab) / math.sqrt(p.ab) * c_t / rms(g)
    expected = p.r1 * (p.ddim() - rho_t * g)
    ours = first_step("freedom", noise_scaling, sigmas, x, weight=rho)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, p.r1 * p.ddim(), atol=1e-4), "the guidance must move x'"


@pytest.mark.parametrize("noise_scaling, sigmas", LEVELS)
def test_dps_steps_x_prev_along_the_gradient_of_the_residual_norm(noise_scaling, sigmas):
    x, zeta = start(noise_scaling, sigmas), 0.3
    p = Papers(noise_scaling, sigmas, x)
    expected = p.r1 * (p.ddim() - zeta * p.grad_z(lambda image: loss(image).sqrt()))
    ours = first_step("dps", noise_scaling, sigmas, x, weight=zeta)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, p.r1 * p.ddim(), atol=1e-4)


@pytest.mark.parametrize("noise_scaling, sigmas", LEVELS)
def test_mpgd_steps_x0_alone_and_keeps_the_denoisers_noise(noise_scaling, sigmas):
    x, mu = start(noise_scaling, sigmas), 0.2
    p = Papers(noise_scaling, sigmas, x)
    delta = p.mean_guidance(mu / math.sqrt(p.ab), 1)
    expected = p.r1 * p.ddim(x0=p.x0.detach() + delta)  # ε̂ stays the denoiser's
    ours = first_step("mpgd", noise_scaling, sigmas, x, weight=5.0, backward_steps=1, backward_lr=mu)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, p.r1 * p.ddim(), atol=1e-4)


# TFG's s_t at the first of two steps over its mean: ρ_t = ρ·s_t/mean(s), μ_t likewise
SCHEDULE_FACTORS = {"increase": lambda alphas: alphas[0] / (sum(alphas) / 2),
                    "decrease": lambda alphas: (1 - alphas[0]) / ((2 - sum(alphas)) / 2),
                    "constant": lambda alphas: 1.0}


@pytest.mark.parametrize("rho_schedule, mu_schedule", [("increase", "increase"), ("decrease", "constant"),
                                                       ("constant", "decrease")])
@pytest.mark.parametrize("noise_scaling, sigmas", LEVELS)
def test_tfg_adds_variance_and_mean_guidance_with_its_schedules(noise_scaling, sigmas, rho_schedule, mu_schedule):
    x, rho, mu = start(noise_scaling, sigmas), 0.4, 0.1
    p = Papers(noise_scaling, sigmas, x)
    variance = -rho * SCHEDULE_FACTORS[rho_schedule](p.alphas) * p.grad_z()
    delta = p.mean_guidance(mu * SCHEDULE_FACTORS[mu_schedule](p.alphas), 2)
    expected = p.r1 * (p.ddim() + variance / math.sqrt(p.alphas[0]) + math.sqrt(p.ab1) * delta)
    ours = first_step("tfg", noise_scaling, sigmas, x, weight=rho, backward_steps=2, backward_lr=mu,
                      sampling=dict(rho_schedule=rho_schedule, mu_schedule=mu_schedule))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_tfg_takes_no_variance_step_where_alpha_t_is_zero():
    """A flow model starts at pure noise, ᾱ = 0, where Δ_t/√α_t is undefined: the step is plain DDIM there."""
    sigmas = (1.0, 0.5, 0.0)
    x = start(flow_noise_scaling, sigmas)
    p = Papers(flow_noise_scaling, sigmas, x)
    assert p.alphas[0] == 0
    ours = first_step("tfg", flow_noise_scaling, sigmas, x, weight=0.4, sampling=dict(rho_schedule="decrease"))
    torch.testing.assert_close(ours, p.r1 * p.ddim(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("smoothing_schedule", ["decrease", "constant"])
def test_tfg_smoothing_reads_the_loss_at_noise_of_its_size(smoothing_schedule):
    noise_scaling, sigmas = eps_noise_scaling, (2.5, 1.1, 0.0)
    a, b = noise_coefficients(noise_scaling, sigmas[0])
    x = torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(1)) * b
    denoiser, seen = GaussianDenoiser(noise_scaling), []

    def recording_decode(x0):
        seen.append(x0.detach().clone())
        return decode(x0)

    target = torch.rand(2, 3, 32, 32)

    class Wide(Loss):
        def bind(self, device):
            return lambda image: ((image - target) ** 2).flatten(1).sum(1)

    sample_universal_guidance(denoiser, x.clone(), torch.tensor(sigmas), noise_scaling=noise_scaling, disable=True,
                              guidance=[GuidanceTerm(name="test", loss=Wide(), weight=0.1)], decode=recording_decode,
                              settings=Settings(method="tfg", smoothing=0.5, smoothing_schedule=smoothing_schedule))
    x0 = denoiser(x, torch.full((2,), sigmas[0]))
    offset = float((seen[0] - x0).pow(2).mean().sqrt())
    spread = math.sqrt(1 - alpha_bar(a, b)) if smoothing_schedule == "decrease" else 1.0
    assert offset == pytest.approx(0.5 * spread, rel=0.05)


def test_ugd_is_the_default_and_every_method_has_a_paper_rule():
    assert list(METHODS)[0] == "ugd" == Settings().method
    for name, module in METHODS.items():
        assert "z_{t−1}" in module.__doc__ or "eq. 6" in module.__doc__, f"{name}: its update rule is not written"


def test_an_unknown_method_a_bad_smoothing_or_schedule_is_refused():
    with pytest.raises(ValueError, match="Unknown guidance method 'dpm'"):
        Settings(method="dpm")
    with pytest.raises(ValueError, match="smoothing must be"):
        Settings(smoothing=-1.0)
    with pytest.raises(ValueError, match="rho_schedule must be one of"):
        Settings(rho_schedule="up")


@pytest.mark.parametrize("method", ["dps", "tfg", "mpgd"])
@pytest.mark.parametrize("noise_scaling, sigmas", LEVELS)
def test_an_auto_term_steps_along_the_raw_direction_by_a_fraction_of_the_noise(method, noise_scaling, sigmas):
    """On the auto schedule every method's step is sized to RMS(ε̂): the loss's scale drops out, and the step keeps
    the raw step's direction (DPS's and TFG's on x', MPGD's on x0, which moves x' by a')."""
    x, w = start(noise_scaling, sigmas), 0.3
    p = Papers(noise_scaling, sigmas, x)
    (a, b), (a1, _) = (noise_coefficients(noise_scaling, s) for s in sigmas[:2])
    eps_rms = rms((x - a * p.x0.detach()) / b)
    size = {"dps": p.r * p.r1, "tfg": SCHEDULE_FACTORS["increase"](p.alphas) / math.sqrt(p.alphas[0]) * p.r * p.r1,
            "mpgd": a1 * b * b / (a * p.r)}[method]
    steps = {}
    for scale in (1.0, 1e4):
        class Scaled(Loss):
            def bind(self, device, scale=scale):
                return lambda image: scale * loss(image)

        term = GuidanceTerm(name="test", loss=Scaled(), weight=w, schedule="auto")
        seen = []
        sample_universal_guidance(GaussianDenoiser(noise_scaling), x.clone(), torch.tensor(sigmas), guidance=[term],
                                  decode=decode, noise_scaling=noise_scaling, settings=Settings(method=method),
                                  disable=True, callback=lambda info: seen.append(info["x"].clone()))
        steps[scale] = seen[0] - p.r1 * p.ddim()
    torch.testing.assert_close(steps[1e4], steps[1.0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(rms(steps[1.0]), w * size * eps_rms, rtol=1e-4, atol=0)
    raw = dict(weight=w) if method != "mpgd" else dict(backward_steps=1, backward_lr=0.1)
    raw_step = first_step(method, noise_scaling, sigmas, x, **raw) - p.r1 * p.ddim()
    cosine = torch.nn.functional.cosine_similarity(raw_step.flatten(1), steps[1.0].flatten(1))
    torch.testing.assert_close(cosine, torch.ones(2), rtol=0, atol=1e-4)
