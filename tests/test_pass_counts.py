"""The engine counts each network's passes as they run, without ComfyUI: the counts follow the settings. And
samplers/cost.py prices counts part by part with the part costs bench/speed measured."""
from __future__ import annotations

import pytest
import torch

from samplers import cost as sd_equivalent
from gaussian import GaussianDenoiser, eps_noise_scaling, sigmas_eps
from samplers.pass_counts import PassCounts, recording, report
from samplers.settings import Settings
from samplers.terms import GuidanceTerm
from samplers.universal_guidance import sample_universal_guidance
from test_engine import TargetLoss, decode

BATCH, STEPS = 2, 6


def counted_run(gradient="through_unet", backward_steps=1, recurrence=2, guidance_every=2, weight=0.05, **levers):
    counts = PassCounts()
    guidance = (GuidanceTerm(name="test guidance", loss=TargetLoss(torch.full((1, 3, 4, 4), 0.9)), weight=weight,
                             backward_steps=backward_steps, backward_lr=0.05),)
    x = torch.randn(BATCH, 2, 4, 4) * float(sigmas_eps(STEPS)[0])
    model, guidance, counted_decode, _ = counts.wrapped(GaussianDenoiser(eps_noise_scaling), guidance, decode, full_area=16)
    settings = Settings(recurrence=recurrence, guidance_every=guidance_every, gradient=gradient, **levers)
    with counts.counting_optimizer_steps():
        sample_universal_guidance(model, x, sigmas_eps(STEPS), guidance=guidance, decode=counted_decode,
                                  noise_scaling=eps_noise_scaling, settings=settings, disable=True)
    return counts


@pytest.mark.parametrize("gradient", ["through_unet", "x0_only"])
@pytest.mark.parametrize("backward_steps", [0, 3])
def test_counts_follow_the_steps_recurrence_and_backward_steps(gradient, backward_steps):
    counts = counted_run(gradient, backward_steps)
    guided_passes = 3 * 2  # steps 0, 2 and 4, k = 2 each
    plain_passes = 3
    assert counts.forward["denoiser"] == BATCH * (guided_passes + plain_passes)
    assert counts.backward["denoiser"] == (BATCH * guided_passes if gradient == "through_unet" else 0)
    losses = BATCH * guided_passes * (1 + backward_steps)  # one for forward guidance, one per backward step
    assert counts.forward["guidance_network"] == counts.backward["guidance_network"] == losses
    assert counts.forward["decoder"] == counts.backward["decoder"] == losses


def test_backward_guidance_alone_runs_no_denoiser_backward():
    counts = counted_run(backward_steps=2, weight=0.0, guidance_every=1, recurrence=1)
    assert counts.forward["denoiser"] == BATCH * STEPS and counts.backward["denoiser"] == 0
    assert counts.forward["guidance_network"] == counts.backward["guidance_network"] == BATCH * STEPS * 2


@pytest.mark.parametrize("backward_steps", [0, 3])
def test_backward_end_gives_the_plain_steps_before_it_backward_guidance_alone_in_one_pass(backward_steps):
    counts = counted_run(backward_steps=backward_steps, guidance_every=1, guidance_end=0.5, backward_end=5 / 6)
    guided_passes, backward_only = 3 * 2, 2 if backward_steps else 0  # steps 0-2 with k = 2; then steps 3 and 4
    assert counts.forward["denoiser"] == BATCH * (guided_passes + 3)
    assert counts.backward["denoiser"] == BATCH * guided_passes  # no forward guidance in the late steps
    losses = BATCH * (guided_passes * (1 + backward_steps) + backward_only * backward_steps)
    assert counts.forward["guidance_network"] == counts.forward["decoder"] == losses
    with pytest.raises(ValueError, match="backward_end"):
        counted_run(backward_end=1.5)


@pytest.mark.parametrize("backward_steps", [0, 3])
def test_backward_recurrence_sets_k_on_the_steps_with_backward_guidance_only(backward_steps):
    counts = counted_run(backward_steps=backward_steps, recurrence=4, backward_recurrence=2)
    k = 2 if backward_steps else 4
    assert counts.forward["denoiser"] == BATCH * (3 * k + 3)  # steps 0, 2 and 4 guided, 1, 3 and 5 plain
    assert counts.forward["decoder"] == BATCH * 3 * k * (1 + backward_steps)
    with pytest.raises(ValueError, match="backward_recurrence"):
        counted_run(backward_recurrence=-1)


def test_backward_recurrence_also_sets_k_on_the_steps_with_backward_guidance_alone():
    counts = counted_run(backward_steps=3, guidance_every=1, guidance_end=0.5, backward_end=1.0, backward_recurrence=3)
    assert counts.forward["denoiser"] == BATCH * STEPS * 3  # steps 0-2 guided and 3-5 backward alone, k = 3 each
    assert counts.backward["denoiser"] == BATCH * 3 * 3  # forward guidance on the guided steps only
    assert counts.forward["decoder"] == BATCH * (3 * 3 * (1 + 3) + 3 * 3 * 3)


def test_a_smaller_input_counts_its_share_of_the_full_area():
    counts = PassCounts()
    half = counts.counted("decoder", decode, full_area=16)
    half(torch.zeros(3, 2, 2, 2, requires_grad=True)).sum().backward()
    assert counts.forward["decoder"] == counts.backward["decoder"] == 3 * 4 / 16


def test_recording_sums_the_runs_reported_inside_it_and_only_those():
    run = counted_run()
    report(run)  # outside any recording: goes nowhere
    with recording() as outer:
        report(run)
        with recording() as inner:
            report(run)
    assert inner.forward == run.forward
    assert outer.forward == {part: 2 * n for part, n in run.forward.items()}
    assert outer.per_sample(2).backward == run.backward


COSTS = {"unet": {"forward": 4.0, "backward": 6.0}, "vae": {"forward": 7.0, "backward": 13.0},
         "taesd": {"forward": 0.5, "backward": 0.7}, "clip": {"forward": 0.2, "backward": 0.3},
         "segmentation": {"forward": 0.1, "backward": 0.2}}


def test_an_unguided_count_of_the_reference_steps_prices_at_one_and_fewer_steps_below():
    unguided = {"denoiser": 20, "unet": 20, "decoder": 0, "guidance_network": 0}
    nothing = dict.fromkeys(unguided, 0)
    assert sd_equivalent.sd15_multiple(unguided, nothing, "vae", "clip", COSTS) == pytest.approx(1.0)
    assert sd_equivalent.unguided_multiple(10, COSTS) == pytest.approx((10 * 8 + 7) / (20 * 8 + 7))


def test_a_guided_count_is_priced_part_by_part():
    run = counted_run().per_sample(BATCH)
    vae, taesd = (sd_equivalent.sd15_multiple(run.forward, run.backward, decoder, "clip", COSTS) for decoder in ("vae", "taesd"))
    seconds = (7.0 + 2 * (9 * 4.0 + 6 * 6.0) + 12 * (7.0 + 13.0) + 12 * (0.2 + 0.3))  # 9 passes, 6 guided, 12 losses
    assert vae == pytest.approx(seconds / (20 * 8 + 7))
    assert taesd < vae


def test_the_measured_part_costs_price_every_part():
    costs = sd_equivalent.part_costs()
    assert set(costs) == {"unet", "vae", "taesd", "clip", "segmentation"}
    assert all(c["forward"] > 0 and c["backward"] >= 0 for c in costs.values()), costs
    assert costs["taesd"]["forward"] < costs["vae"]["forward"]
