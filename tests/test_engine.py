"""The engine against closed-form Gaussian denoisers, without ComfyUI."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from gaussian import GaussianDenoiser, eps_noise_scaling, flow_noise_scaling, sigmas_eps, sigmas_flow
from samplers.parameterization import alpha_bar, noise_coefficients
from samplers.terms import GuidanceTerm, combine
from samplers.backward_guidance import backward_guidance
from samplers.base_step import base_step, renoise
from samplers.guide import Guide
from samplers.methods.ugd import guided_x0
from samplers.parameterization import forward_guidance_scale
from samplers.settings import LEVERS, Settings
from samplers.universal_guidance import sample_universal_guidance

PARAMETERISATIONS = [(eps_noise_scaling, 2.5), (flow_noise_scaling, 0.7)]


def decode(x0):
    """A smooth stand-in decoder: latent (B, 2, h, w) -> 'image' (B, 3, h, w)."""
    return torch.sigmoid(torch.cat([x0, x0[:, :1] * 0.5], dim=1))


class TargetLoss:
    """ℓ = per-sample squared distance of the image to a target; records how often it is bound."""

    def __init__(self, target):
        self.target = target
        self.binds = 0

    def check(self, batch, height, width):
        pass

    def bind(self, device):
        self.binds += 1
        return lambda image: ((image - self.target) ** 2).flatten(1).sum(1)


def term(loss, **settings):
    return GuidanceTerm(name="test guidance", loss=loss, **settings)


@pytest.mark.parametrize("noise_scaling, sigma", PARAMETERISATIONS)
def test_forward_guidance_equals_the_papers_eps_form(noise_scaling, sigma):
    torch.manual_seed(0)
    denoiser = GaussianDenoiser(noise_scaling)
    target = torch.rand(2, 3, 4, 5)
    loss_fn = TargetLoss(target).bind("cpu")
    x = torch.randn(2, 2, 4, 5) * 2
    a, b = noise_coefficients(noise_scaling, sigma)
    w = 3.0

    # The paper, in the DDPM latent z = x/r: ε̂ = ε_θ(z) + w·√(1−ᾱ)·∇_z ℓ(decode(x̂0(z))), x̂0' = (z − √(1−ᾱ)·ε̂)/√ᾱ.
    r = math.hypot(a, b)
    ab = alpha_bar(a, b)
    sigma_vec = torch.full((2,), sigma)

    def eps_theta(z):
        return (z - math.sqrt(ab) * denoiser(z * r, sigma_vec)) / math.sqrt(1 - ab)

    z = (x / r).requires_grad_(True)
    eps = eps_theta(z)
    x0_hat = (z - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    (grad_z,) = torch.autograd.grad(loss_fn(decode(x0_hat)).sum(), z)
    eps_hat = eps.detach() + w * math.sqrt(1 - ab) * grad_z
    paper_x0 = (z.detach() - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)

    guided = term(TargetLoss(target), weight=w)
    ours = guided_x0(Guide(denoiser, decode), x, sigma_vec, [(guided, loss_fn)], a, b)
    torch.testing.assert_close(ours, paper_x0, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, denoiser(x, sigma_vec)), "the guidance must move x0"


def test_paper_schedule_is_w_sigma_squared_for_eps_models():
    assert forward_guidance_scale("paper", 4.0, 1.0, 3.0) == pytest.approx(4.0 * 9.0)
    assert forward_guidance_scale("paper", 4.0, 0.0, 1.0) == 0.0  # flow model at σ = 1: no x0 from the ε-form
    # constant s: c = s·(b/a)·√(a²+b²)
    assert forward_guidance_scale("constant", 2.0, 0.5, 0.5) == pytest.approx(2.0 * 1.0 * math.sqrt(0.5))
    # auto: c = s(t)·b/a, applied to a gradient of ε̂'s RMS
    assert forward_guidance_scale("auto", 4.0, 1.0, 3.0) == pytest.approx(4.0 * 3.0 / math.sqrt(10.0) * 3.0)


def rms(t):
    return t.pow(2).flatten(1).mean(1).sqrt()


@pytest.mark.parametrize("gradient", ["through_unet", "x0_only"])
@pytest.mark.parametrize("noise_scaling, sigma", PARAMETERISATIONS)
def test_auto_strength_steps_by_its_fraction_of_the_predicted_noise(noise_scaling, sigma, gradient):
    """RMS(x0' − x0) = w·√(1 − ᾱ)·(b/a)·RMS(ε̂) per sample, along the raw step's direction, for losses of any scale."""
    torch.manual_seed(0)
    a, b = noise_coefficients(noise_scaling, sigma)
    denoiser = GaussianDenoiser(noise_scaling)
    x = torch.randn(3, 2, 4, 4) * b + a * 0.3
    sigma_vec = torch.full((3,), sigma)
    target = torch.rand(3, 3, 4, 4)
    w = 0.3
    steps = {}
    for loss_scale in (1.0, 1e4):
        def loss_fn(image, loss_scale=loss_scale):
            return loss_scale * ((image - target) ** 2).flatten(1).sum(1)

        auto = term(TargetLoss(target), weight=w, schedule="auto")
        guided = guided_x0(Guide(denoiser, decode, gradient=gradient), x, sigma_vec, [(auto, loss_fn)], a, b)
        steps[loss_scale] = denoiser(x, sigma_vec) - guided
    x0 = denoiser(x, sigma_vec)
    eps_rms = rms((x - a * x0) / b)
    promised = w * math.sqrt(1 - alpha_bar(a, b)) * (b / a) * eps_rms
    torch.testing.assert_close(rms(steps[1.0]), promised, rtol=1e-4, atol=0)
    torch.testing.assert_close(steps[1e4], steps[1.0], rtol=1e-4, atol=1e-7)  # the loss's scale drops out
    raw = term(TargetLoss(target), weight=1.0)
    raw_loss = lambda image: ((image - target) ** 2).flatten(1).sum(1)
    raw_step = x0 - guided_x0(Guide(denoiser, decode, gradient=gradient), x, sigma_vec, [(raw, raw_loss)], a, b)
    cosine = torch.nn.functional.cosine_similarity(raw_step.flatten(1), steps[1.0].flatten(1))
    torch.testing.assert_close(cosine, torch.ones(3), rtol=0, atol=1e-5)


def test_auto_strength_sizes_each_term_on_its_own_and_keeps_to_the_update_mask():
    torch.manual_seed(1)
    a, b = noise_coefficients(eps_noise_scaling, 2.0)
    denoiser = GaussianDenoiser(eps_noise_scaling)
    x, sigma_vec = torch.randn(2, 2, 4, 4) * b, torch.full((2,), 2.0)
    targets = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    losses = [lambda image, t=t, k=k: k * ((image - t) ** 2).flatten(1).sum(1) for t, k in zip(targets, (1.0, 500.0))]
    terms = [term(TargetLoss(t), weight=0.2, schedule="auto") for t in targets]
    mask = torch.zeros(2, 1, 4, 4)
    mask[..., :2] = 1
    x0 = denoiser(x, sigma_vec)

    def step(active, update_mask=None):
        guide = Guide(denoiser, decode, update_mask=update_mask, gradient="x0_only")
        return x0 - guided_x0(guide, x, sigma_vec, active, a, b)

    alone = [step([(t, fn)]) for t, fn in zip(terms, losses)]
    torch.testing.assert_close(rms(alone[0]), rms(alone[1]), rtol=1e-4, atol=0)  # 500× the loss, the same step
    torch.testing.assert_close(step(list(zip(terms, losses))), alone[0] + alone[1], rtol=1e-4, atol=1e-6)
    masked = step([(terms[0], losses[0])], mask)
    assert (masked * (1 - mask)).abs().max() == 0
    torch.testing.assert_close(rms(masked), rms(alone[0]), rtol=1e-4, atol=0)  # the whole step inside the mask


@pytest.mark.parametrize("noise_scaling, sigmas", [(eps_noise_scaling, (3.0, 1.2)), (flow_noise_scaling, (0.8, 0.5))])
def test_renoising_keeps_the_marginal_at_the_higher_level(noise_scaling, sigmas):
    sigma, sigma_next = sigmas
    a, b = noise_coefficients(noise_scaling, sigma)
    a1, b1 = noise_coefficients(noise_scaling, sigma_next)
    g = torch.Generator().manual_seed(0)
    x0 = 0.7
    x_next = a1 * x0 + b1 * torch.randn(400_000, generator=g)
    x = renoise(x_next, a1, b1, a, b, torch.randn(400_000, generator=g))
    assert float(x.mean()) == pytest.approx(a * x0, abs=0.02)
    assert float(x.std()) == pytest.approx(b, rel=0.01)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_backward_guidance_lowers_the_loss(optimizer):
    torch.manual_seed(0)
    target = torch.rand(2, 3, 4, 4)
    loss = TargetLoss(target)
    loss_fn = loss.bind("cpu")
    x0 = torch.randn(2, 2, 4, 4)
    guided = term(loss, backward_steps=30, backward_lr=0.1 if optimizer == "adam" else 2.0, optimizer=optimizer)
    delta = backward_guidance(Guide(None, decode), x0, guided, loss_fn, guided.backward_steps, guided.backward_lr,
                              guided.optimizer)
    before, after = loss_fn(decode(x0)), loss_fn(decode(x0 + delta))
    assert (after < 0.5 * before).all()


def test_backward_guidance_stays_inside_the_update_mask():
    target = torch.rand(1, 3, 4, 4)
    loss = TargetLoss(target)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1.0
    guided = term(loss, backward_steps=5, backward_lr=0.1)
    delta = backward_guidance(Guide(None, decode, update_mask=mask), torch.randn(1, 2, 4, 4), guided, loss.bind("cpu"),
                              guided.backward_steps, guided.backward_lr)
    assert torch.equal(delta[..., 2:], torch.zeros_like(delta[..., 2:]))
    assert delta[..., :2].abs().sum() > 0


def test_base_steps_reduce_to_euler_and_ancestral():
    x, x0 = torch.tensor([2.0]), torch.tensor([0.5])
    # DDIM with η = 0 is k-diffusion's Euler step: x0 + (σ'/σ)(x − x0)
    assert torch.allclose(base_step(x, x0, 1.0, 4.0, 1.0, 1.0), x0 + 0.25 * (x - x0))
    # With η = 1 the noise part has k-diffusion's σ_up² = σ'²(σ² − σ'²)/σ²
    zero_noise = base_step(x, x0, 1.0, 4.0, 1.0, 1.0, eta=1.0, noise=torch.zeros(1))
    unit_noise = base_step(x, x0, 1.0, 4.0, 1.0, 1.0, eta=1.0, noise=torch.ones(1))
    assert float(unit_noise - zero_noise) == pytest.approx(math.sqrt(1.0 * (16.0 - 1.0) / 16.0))


def _euler(denoiser, x, sigmas):
    for i in range(len(sigmas) - 1):
        d = denoiser(x, sigmas[i] * torch.ones(x.shape[0]))
        x = d + (sigmas[i + 1] / sigmas[i]) * (x - d)
    return x


@pytest.mark.parametrize("noise_scaling, sigmas", [(eps_noise_scaling, sigmas_eps()), (flow_noise_scaling, sigmas_flow())])
def test_zero_strength_is_the_plain_ddim_sampler(noise_scaling, sigmas):
    denoiser = GaussianDenoiser(noise_scaling)
    x = torch.randn(2, 2, 4, 4) * float(sigmas[0])
    inert = (term(TargetLoss(torch.zeros(1, 3, 4, 4)), weight=0.0),)
    ours = sample_universal_guidance(denoiser, x, sigmas, guidance=inert, decode=decode, noise_scaling=noise_scaling, disable=True)
    torch.testing.assert_close(ours, _euler(denoiser, x, sigmas), rtol=1e-5, atol=1e-5)


def run(noise_scaling, sigmas, guidance, x, **options):
    """A guided run on the Gaussian denoiser; options are settings (samplers/settings.py) or the engine's own."""
    levers = {name: options.pop(name) for name in list(options) if name in LEVERS}
    return sample_universal_guidance(
        GaussianDenoiser(noise_scaling), x, sigmas, guidance=guidance, decode=decode,
        noise_scaling=noise_scaling, disable=True, settings=Settings(**levers), **options,
    )


@pytest.mark.parametrize("noise_scaling, sigmas", [(eps_noise_scaling, sigmas_eps()), (flow_noise_scaling, sigmas_flow())])
@pytest.mark.parametrize("settings", [dict(weight=0.05), dict(backward_steps=5, backward_lr=0.05), dict(weight=0.05, backward_steps=5, backward_lr=0.05)])
def test_guided_sampling_ends_with_a_lower_loss(noise_scaling, sigmas, settings):
    torch.manual_seed(1)
    target = torch.full((1, 3, 4, 4), 0.9)
    loss = TargetLoss(target)
    x = torch.randn(2, 2, 4, 4) * float(sigmas[0])
    guided = run(noise_scaling, sigmas, (term(loss, **settings),), x, recurrence=2, seed=3)
    unguided = run(noise_scaling, sigmas, (term(loss, weight=0.0),), x, recurrence=2, seed=3)
    fn = loss.bind("cpu")
    assert (fn(decode(guided)) < fn(decode(unguided))).all()


def test_same_seed_same_result_and_other_seed_differs():
    target = torch.full((1, 3, 4, 4), 0.9)
    guidance = (term(TargetLoss(target), weight=0.05),)
    x = torch.randn(2, 2, 4, 4) * 8
    first = run(eps_noise_scaling, sigmas_eps(), guidance, x, recurrence=3, base="ddpm", seed=7)
    again = run(eps_noise_scaling, sigmas_eps(), guidance, x, recurrence=3, base="ddpm", seed=7)
    other = run(eps_noise_scaling, sigmas_eps(), guidance, x, recurrence=3, base="ddpm", seed=8)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_samples_in_a_batch_are_guided_independently():
    targets = torch.stack([torch.full((3, 4, 4), 0.9), torch.full((3, 4, 4), 0.1)])
    x = torch.randn(2, 2, 4, 4) * 8
    settings = dict(weight=0.05, backward_steps=3, backward_lr=0.05)
    together = run(eps_noise_scaling, sigmas_eps(), (term(TargetLoss(targets), **settings),), x)
    for i in range(2):
        alone = run(eps_noise_scaling, sigmas_eps(), (term(TargetLoss(targets[i : i + 1]), **settings),), x[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-6)


def test_guidance_effects_add_up():
    """Two terms with strengths w1 and w2 on the same loss act like one term with w1 + w2."""
    target = torch.full((1, 3, 4, 4), 0.9)
    x = torch.randn(1, 2, 4, 4) * 8
    loss = TargetLoss(target)
    two = run(eps_noise_scaling, sigmas_eps(), combine((term(loss, weight=0.02),), (term(loss, weight=0.03),)), x)
    one = run(eps_noise_scaling, sigmas_eps(), (term(loss, weight=0.05),), x)
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-5)


def test_step_window_limits_guidance_and_recurrence():
    denoiser = GaussianDenoiser(eps_noise_scaling)
    x = torch.randn(1, 2, 4, 4) * 8
    windowed = (term(TargetLoss(torch.zeros(1, 3, 4, 4)), weight=0.01, start_percent=0.5, end_percent=1.0),)
    sample_universal_guidance(denoiser, x, sigmas_eps(6), guidance=windowed, decode=decode,
                              noise_scaling=eps_noise_scaling, settings=Settings(recurrence=4), disable=True)
    assert denoiser.calls == 3 * 1 + 3 * 4  # steps 0-2 unguided once each, steps 3-5 guided four times each


def test_progress_callback_once_per_step_and_interrupt_inside_inner_loops():
    steps, k, m = 4, 3, 2
    events, checks = [], []
    guidance = (term(TargetLoss(torch.zeros(1, 3, 4, 4)), weight=0.01, backward_steps=m),)
    sample_universal_guidance(
        GaussianDenoiser(eps_noise_scaling), torch.randn(1, 2, 4, 4), sigmas_eps(steps), callback=events.append,
        guidance=guidance, decode=decode, noise_scaling=eps_noise_scaling, settings=Settings(recurrence=k), disable=True,
        check_interrupt=lambda: checks.append(1),
    )
    assert [e["i"] for e in events] == list(range(steps))
    assert len(checks) == steps * k * (1 + m)


def test_interruption_stops_sampling():
    class Stop(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        run(eps_noise_scaling, sigmas_eps(), (term(TargetLoss(torch.zeros(1, 3, 4, 4)), backward_steps=5),),
            torch.randn(1, 2, 4, 4), check_interrupt=check)


def test_non_finite_loss_is_skipped_with_one_warning(caplog):
    class SometimesNaN(TargetLoss):
        def bind(self, device):
            base = super().bind(device)
            return lambda image: base(image) * float("nan")

    x = torch.randn(1, 2, 4, 4) * 8
    nan_guidance = (term(SometimesNaN(torch.zeros(1, 3, 4, 4)), weight=0.05, backward_steps=2),)
    with caplog.at_level("WARNING"):
        out = run(eps_noise_scaling, sigmas_eps(), nan_guidance, x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _euler(GaussianDenoiser(eps_noise_scaling), x, sigmas_eps()))
    warnings = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 2  # one for the forward loss, one for the backward loss; not one per step


def test_losses_are_bound_once_per_run():
    loss = TargetLoss(torch.zeros(1, 3, 4, 4))
    run(eps_noise_scaling, sigmas_eps(), (term(loss, weight=0.01),), torch.randn(1, 2, 4, 4), recurrence=2)
    assert loss.binds == 1


@pytest.mark.parametrize("settings, message", [
    (dict(weight=-1.0), "weight must be a finite number >= 0"),
    (dict(schedule="cosine"), "schedule must be one of"),
    (dict(backward_steps=-1), "backward_steps must be >= 0"),
    (dict(backward_steps=1, backward_lr=0.0), "backward_lr must be > 0"),
    (dict(start_percent=0.6, end_percent=0.4), "start_percent < end_percent"),
])
def test_bad_settings_are_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        term(TargetLoss(None), **settings)


def test_recurrence_below_one_is_rejected():
    with pytest.raises(ValueError, match="recurrence"):
        run(eps_noise_scaling, sigmas_eps(), (), torch.zeros(1, 2, 4, 4), recurrence=0)


def test_engine_and_losses_never_import_comfyui():
    code = (
        "import sys; sys.path.insert(0, '.');"
        "import samplers.universal_guidance, guidance.clip_similarity, guidance.clip_gram_style, guidance.reconstruction,"
        " guidance.segmentation, guidance.face_identity, guidance.object_location, guidance.classifier;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'nodes', 'comfy_api')];"
        "assert not bad, bad"
    )
    root = __file__.rsplit("/tests/", 1)[0]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
