"""Particles (samplers/particles.py) against closed-form Gaussian denoisers, without ComfyUI: one particle is the
run without particles, chunks do not change a run, each image keeps its own particles, and the potentials,
weights and draws follow their formulas."""
from __future__ import annotations

import math

import pytest
import torch

from gaussian import GaussianDenoiser, eps_noise_scaling, sigmas_eps
from samplers.guide import Guide
from samplers.particles import (Particles, draw_ancestors, log_potentials, particle_rows, resampled_after,
                                resampling_weights)
from samplers.pass_counts import PassCounts
from samplers.progress import LossHistory
from samplers.settings import Settings
from samplers.terms import GuidanceTerm
from samplers.universal_guidance import sample_universal_guidance

STEPS = 6


def decode(x0):
    return torch.sigmoid(torch.cat([x0, x0[:, :1] * 0.5], dim=1))


class BrightnessLoss:
    """ℓ = distance of each image's mean to a per-image target (one target per image, as a batch of targets)."""

    def __init__(self, targets):
        self.targets = torch.tensor(targets)

    def check(self, batch, height, width):
        assert len(self.targets) in (1, batch)

    def bind(self, device):
        return lambda image: (image.flatten(1).mean(1) - self.targets.to(image)) ** 2


def run(settings, images=1, targets=(0.9,), weight=0.3, reward_only=False, counts=None, **kwargs):
    term = GuidanceTerm(name="brightness", loss=BrightnessLoss(targets), weight=weight, schedule="auto",
                        reward_only=reward_only)
    model, guidance, counted_decode = GaussianDenoiser(eps_noise_scaling), (term,), decode
    if counts is not None:
        model, guidance, counted_decode, _ = counts.wrapped(model, guidance, decode)
    x = torch.randn(images, 2, 4, 4, generator=torch.Generator().manual_seed(11)) * 8
    return sample_universal_guidance(model, x, sigmas_eps(STEPS), guidance=guidance, decode=counted_decode,
                                     noise_scaling=eps_noise_scaling, settings=settings, seed=3, disable=True, **kwargs)


@pytest.mark.parametrize("base", ["ddim", "ddpm"])
def test_one_particle_is_the_run_without_particles_and_its_line_is_particle_zero(base):
    plain = run(Settings(recurrence=2, base=base))
    assert torch.equal(run(Settings(recurrence=2, base=base, particles=1, resample_every=1, potential="sum")), plain)
    every = run(Settings(recurrence=2, base=base, particles=3, particle_batch=1, return_particles=True))
    assert every.shape == (3, 2, 4, 4)
    assert any(torch.equal(row, plain[0]) for row in every)  # particle 0 ran exactly the plain run


def test_chunks_and_their_size_do_not_change_the_run():
    settings = Settings(recurrence=2, base="ddpm", particles=5, resample_every=2)
    whole = run(settings)
    for size in (1, 2, 3):
        torch.testing.assert_close(run(settings.replace(particle_batch=size)), whole, rtol=0, atol=1e-6)


def test_a_seed_reproduces_the_particles_and_another_seed_does_not():
    settings = Settings(recurrence=2, base="ddpm", particles=4, resample_every=1, resampling="multinomial")
    assert torch.equal(run(settings), run(settings))
    term = GuidanceTerm(name="brightness", loss=BrightnessLoss((0.9,)), weight=0.3, schedule="auto")
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(11)) * 8
    other = sample_universal_guidance(GaussianDenoiser(eps_noise_scaling), x, sigmas_eps(STEPS), guidance=(term,),
                                      decode=decode, noise_scaling=eps_noise_scaling, settings=settings, seed=4,
                                      disable=True)
    assert not torch.equal(other, run(settings))


class Brightness:
    """ℓ = −mean of the image: the brightest particle wins."""

    def bind(self, device):
        return lambda image: -image.flatten(1).mean(1)


def labelled_particles(count, images, **settings):
    """Particles whose rows hold their own row number, rewarded by it."""
    term = GuidanceTerm(name="brightness", loss=Brightness())
    particles = Particles(Settings(particles=count, **settings), images, 0, [(term, term.loss.bind("cpu"))])
    x = torch.arange(count * images, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 3, 2, 2).clone()
    return particles, x, Guide(denoise=lambda x, sigma: x, decode=lambda x0: x0)


def test_resampling_keeps_the_shape_and_each_image_its_own_particles_and_the_selection_ranks_them():
    particles, x, guide = labelled_particles(4, 3, temperature=1e3)
    resampled = particles.resample(guide, x, x, 1.0, 0.0)
    assert resampled.shape == x.shape
    rows = resampled[:, 0, 0, 0].long().reshape(4, 3)  # (particle, image)
    assert (rows % 3 == torch.arange(3)).all()  # every image's particles came from its own
    assert (rows == 3 * 3 + torch.arange(3)).all()  # at λ = 1000 all copy each image's best (the last particle)
    particles, x, guide = labelled_particles(4, 3, return_particles=True)
    ranked, _ = particles.select(guide, x, x, 1.0, 0.0)
    assert ranked[:, 0, 0, 0].long().tolist() == [9, 10, 11, 6, 7, 8, 3, 4, 5, 0, 1, 2]  # each image's best first
    particles, x, guide = labelled_particles(4, 3)
    assert particles.select(guide, x, x, 1.0, 0.0)[0][:, 0, 0, 0].long().tolist() == [9, 10, 11]


def test_systematic_resampling_at_zero_temperature_keeps_every_particle_once():
    particles, x, guide = labelled_particles(5, 2, temperature=0.0)
    assert torch.equal(particles.resample(guide, x, x, 1.0, 0.0), x)


def test_more_particles_score_better_by_the_guidance_loss():
    loss = BrightnessLoss((0.97,)).bind("cpu")
    one, best_of_8 = (float(loss(decode(run(Settings(base="ddpm", particles=n), targets=(0.97,), weight=0.0))))
                      for n in (1, 8))
    assert best_of_8 < one


def test_reward_only_terms_take_no_gradient_and_a_run_counts_particles_times_passes():
    plain = run(Settings(), weight=0.3)
    unguided = run(Settings(), weight=0.0)
    assert torch.equal(run(Settings(), weight=0.3, reward_only=True), unguided)
    assert not torch.equal(plain, unguided)
    one, many = PassCounts(), PassCounts()
    run(Settings(recurrence=2), counts=one)
    run(Settings(recurrence=2, particles=4, resample_every=2), counts=many)
    # every particle's passes, the first particle's start, and a reward (decode and loss) at each resampling and
    # at the end
    assert many.forward["denoiser"] == 4 * one.forward["denoiser"] + 1
    resamplings = len(resampled_after(Settings(particles=4, resample_every=2), STEPS))
    assert resamplings == 2  # after steps 2 and 4; the selection follows step 6
    assert many.forward["decoder"] == 4 * one.forward["decoder"] + 4 * (resamplings + 1)


def test_the_interrupt_is_checked_before_every_chunk_of_particles():
    checks = []
    run(Settings(particles=3, particle_batch=1), check_interrupt=lambda: checks.append(1), weight=0.0)
    assert len(checks) == 3 * STEPS + 3  # every chunk of every pass, and of the final reward

    def stop():
        if len(checks) == 4:
            raise InterruptedError
        checks.append(1)

    checks.clear()
    with pytest.raises(InterruptedError):
        run(Settings(particles=3, particle_batch=1), check_interrupt=stop, weight=0.0)
    assert len(checks) == 4  # stopped inside the second pass, after its first chunk


def test_the_loss_plot_shows_the_chosen_particles_path():
    history, paths = LossHistory(), []
    settings = Settings(base="ddpm", particles=4, resample_every=2)
    run(settings, on_chosen=paths.append)
    (path,) = paths
    assert set(path) == {"brightness"} and sorted(path["brightness"]) == list(range(STEPS))
    term = GuidanceTerm(name="brightness", loss=BrightnessLoss((0.9,)), weight=0.3)
    history.start([term], STEPS)
    history.chosen(path)
    assert history.values["brightness"] == [path["brightness"][i] for i in range(STEPS)]


def test_resampling_steps_come_from_the_interval_or_the_list_and_never_the_last_step():
    assert resampled_after(Settings(), 10) == set()
    assert resampled_after(Settings(particles=2), 10) == set()  # best-of-N
    assert resampled_after(Settings(particles=2, resample_every=3), 10) == {2, 5, 8}
    assert resampled_after(Settings(particles=2, resample_every=3, resample_steps="1, 4 10"), 10) == {0, 3}
    with pytest.raises(ValueError, match="resample_steps must list whole step numbers"):
        Settings(resample_steps="5, ten")
    with pytest.raises(ValueError, match="counts steps from 1"):
        Settings(resample_steps="0")


def test_the_potentials_and_weights_follow_fk_steering():
    rewards = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.2, -2.5, -0.4, -1.0]])  # (resamplings, 2 particles × 2 images)
    lam = 2.0
    assert torch.allclose(log_potentials(rewards, "max", lam), lam * torch.tensor([-0.2, -2.0, -0.4, -1.0]))
    assert torch.allclose(log_potentials(rewards, "sum", lam), lam * torch.tensor([-1.2, -4.5, -0.9, -4.0]))
    assert torch.allclose(log_potentials(rewards, "difference", lam), lam * torch.tensor([0.8, -0.5, 0.1, 2.0]))
    assert torch.allclose(log_potentials(rewards[:1], "difference", lam), lam * rewards[0])  # r = 0 before the first
    # particle-major: rows 0, 2 are image 0's particles, rows 1, 3 image 1's
    weights = resampling_weights(torch.tensor([0.0, 1.0, math.log(3.0), 1.0]), particles=2)
    assert torch.allclose(weights, torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    # a non-finite loss weighs 0; an image with none finite keeps its particles evenly
    weights = resampling_weights(torch.tensor([math.nan, math.nan, 1.0, math.nan]), particles=2)
    assert torch.allclose(weights, torch.tensor([[0.0, 1.0], [0.5, 0.5]]))


def test_systematic_and_multinomial_draws_and_rows_stay_within_each_image():
    generator = torch.Generator().manual_seed(0)
    weights = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    systematic = draw_ancestors(weights, "systematic", generator)
    assert systematic[0].sort().values.tolist() == [0, 0, 1, 1] and systematic[1].tolist() == [3, 3, 3, 3]
    multinomial = draw_ancestors(weights, "multinomial", generator)
    assert set(multinomial[0].tolist()) <= {0, 1} and multinomial[1].tolist() == [3, 3, 3, 3]
    many = draw_ancestors(torch.tensor([[0.1, 0.2, 0.7]]).repeat(4000, 1), "multinomial", generator)
    shares = torch.bincount(many.flatten(), minlength=3) / many.numel()
    assert torch.allclose(shares, torch.tensor([0.1, 0.2, 0.7]), atol=0.01)
    rows = particle_rows(torch.tensor([[1, 1, 0], [2, 0, 0]]))  # 2 images, 3 particles each
    assert rows.tolist() == [2, 5, 2, 1, 0, 1]
    assert [row % 2 for row in rows.tolist()] == [0, 1] * 3  # each row stays its own image's


def test_particles_are_scored_by_the_reward_only_terms_where_there_are_any():
    guiding = GuidanceTerm(name="bright", loss=BrightnessLoss((0.9,)), weight=0.3, schedule="auto")
    scoring = GuidanceTerm(name="dark", loss=BrightnessLoss((0.1,)), reward_only=True)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(11)) * 8
    every = sample_universal_guidance(GaussianDenoiser(eps_noise_scaling), x, sigmas_eps(STEPS),
                                      guidance=(guiding, scoring), decode=decode, noise_scaling=eps_noise_scaling,
                                      settings=Settings(base="ddpm", particles=6, return_particles=True), seed=3,
                                      disable=True)
    dark = scoring.loss.bind("cpu")(decode(every))
    assert (dark[:-1] <= dark[1:] + 1e-6).all()  # ranked by the reward-only term alone
    assert not (guiding.loss.bind("cpu")(decode(every)).diff() >= -1e-6).all()
