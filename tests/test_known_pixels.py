"""Known pixels held by replacement (settings known_pixels "replace") and polished at the end, on the Gaussian
denoiser without ComfyUI, and through ComfyUI's executor on the toy world's inpainting."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

import guided_nodes
from gaussian import GaussianDenoiser, eps_noise_scaling, sigmas_eps
from guidance.reconstruction import ReconstructionLoss
from samplers import cost
from samplers.known_pixels import HeldLatent, kept_cells
from samplers.pass_counts import PassCounts
from samplers.settings import Settings
from samplers.terms import GuidanceTerm
from samplers.universal_guidance import sample_universal_guidance
from test_engine import decode

STEPS = 6


def inpainting(weight=0.0, backward_steps=5, backward_lr=0.1):
    """A reconstruction term whose reference is the decoded latent `latent` on the left half of the image."""
    latent = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    hole = torch.zeros(2, 4, 4)
    hole[..., 2:] = 1  # generate the right half
    term = GuidanceTerm(name="inpainting", loss=ReconstructionLoss(decode(latent).movedim(1, -1), hole),
                        weight=weight, backward_steps=backward_steps, backward_lr=backward_lr)
    return term, latent, 1 - hole[:, None]


def held(latent, known, decoder=decode):
    return HeldLatent(latent, kept_cells(known, (4, 4)), torch.randn(latent.shape, generator=torch.Generator().manual_seed(1)),
                      decoder)


def run(guidance, x, settings=Settings(known_pixels="replace"), hold=None, **engine):
    return sample_universal_guidance(GaussianDenoiser(eps_noise_scaling), x, sigmas_eps(STEPS), guidance=guidance,
                                     decode=decode, noise_scaling=eps_noise_scaling, settings=settings, held=hold,
                                     disable=True, **engine)


def known_error(x, term):
    image, known = term.loss.known_pixels(2, 4, 4)
    return float((((decode(x) - image) ** 2) * known).sum())


def test_held_cells_end_at_the_known_latent_and_the_model_acts_in_the_rest():
    term, latent, known = inpainting(backward_steps=0)
    x = torch.randn(2, 2, 4, 4) * float(sigmas_eps(STEPS)[0])
    out = run((term,), x, hold=held(latent, known))
    torch.testing.assert_close(out[..., :2], latent[..., :2])  # the known half, held
    plain = run((), x, Settings())
    torch.testing.assert_close(out[..., 2:].abs().mean(), plain[..., 2:].abs().mean(), rtol=0.5, atol=0)
    assert not torch.allclose(out[..., 2:], latent[..., 2:], atol=1e-2)  # the hole is generated, not copied


def test_the_polish_moves_the_whole_latent_towards_the_known_pixels_and_other_terms_leave_the_held_cells():
    term, latent, known = inpainting(backward_steps=5)
    other = GuidanceTerm(name="other", loss=ReconstructionLoss(torch.zeros(1, 4, 4, 3)), backward_steps=3,
                         backward_lr=0.5)  # no mask: knows no pixels, a pull everywhere
    x = torch.randn(2, 2, 4, 4) * float(sigmas_eps(STEPS)[0])
    encoding = latent + 0.3 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(2))  # a lossy encoder
    held_only = run((dataclasses.replace(term, backward_steps=0), other), x, hold=held(encoding, known))
    polished = run((term, other), x, hold=held(encoding, known))
    torch.testing.assert_close(held_only[..., :2], encoding[..., :2])  # `other` never moved the held cells
    assert known_error(polished, term) < 0.5 * known_error(held_only, term)
    assert not torch.allclose(polished[..., :2], encoding[..., :2])  # the polish moved the held cells too


def test_the_polish_decodes_with_the_held_latents_decoder_and_is_counted_as_it():
    term, latent, known = inpainting(backward_steps=4)
    counts = PassCounts()
    model, guidance, counted_decode, _ = counts.wrapped(GaussianDenoiser(eps_noise_scaling), (term,), decode, full_area=16)
    hold = held(latent, known, counts.counted("polish_decoder", decode, full_area=16))
    with counts.counting_optimizer_steps():
        sample_universal_guidance(model, torch.randn(2, 2, 4, 4) * 14.6, sigmas_eps(STEPS), guidance=guidance,
                                  decode=counted_decode, noise_scaling=eps_noise_scaling,
                                  settings=Settings(known_pixels="replace", recurrence=3), held=hold, disable=True)
    assert counts.forward["polish_decoder"] == counts.backward["polish_decoder"] == 2 * 4  # once, at the end
    assert counts.forward["decoder"] == 0 and counts.forward["denoiser"] == 2 * STEPS  # the term is only held
    plan = cost.counted_passes(STEPS, [cost.term_settings(term)], Settings(known_pixels="replace", recurrence=3),
                               sigmas=sigmas_eps(STEPS), noise_scaling=eps_noise_scaling)
    assert plan.forward["polish_decoder"] == 4 and plan.backward_guidance_steps == 4 and plan.forward["denoiser"] == STEPS


def test_replace_through_comfyui_keeps_the_known_pixels_closer_than_guidance_alone(comfy):
    """The toy world's inpainting: a photo with a hole, through the Universal Guided KSampler."""
    from toy_world import evaluation, targets

    target = targets.targets("inpainting", "tuning")[0]
    image = torch.from_numpy(target.image).float()[None] / 255
    known = torch.from_numpy(target.known())[None]
    with torch.inference_mode():
        model, vae, unconditional, cheap_vae = guided_nodes.node(comfy, "UGDToyWorldLoader").load()
        (latent,) = guided_nodes.node(comfy, "UGDEmptyToyWorldLatent").generate(1)
        (guidance,) = guided_nodes.node(comfy, "UGDImageReconstructionGuidance").guide(
            image, mask=1 - known, weight=0.0, schedule="paper", backward_steps=5, backward_lr=0.1, optimizer="adam",
            start_percent=0.0, end_percent=1.0)
    common = dict(model=model, vae=vae, positive=unconditional, negative=unconditional, latent_image=latent,
                  guidance=guidance, seed=3, steps=8, cfg=1.0, scheduler="ddim_uniform", denoise=1.0)
    scores = {}
    for mode in ("guidance", "replace"):
        out, _ = guided_nodes.ksampler(comfy, known_pixels=mode, guidance_vae=cheap_vae, recurrence=1, **common)
        with torch.inference_mode():
            picture = vae.decode(out["samples"]).movedim(-1, 1).clone()
        scores[mode] = float(evaluation.masked_psnr(picture, image.movedim(-1, 1), known))
    assert scores["replace"] > scores["guidance"] + 3 and scores["replace"] > 25, scores
    # with the latent's own noise_mask (ComfyUI's inpainting) on top, the held pixels stay held
    masked = dict(common, latent_image={"samples": latent["samples"], "noise_mask": torch.ones(1, 64, 64)})
    out, _ = guided_nodes.ksampler(comfy, known_pixels="replace", guidance_vae=cheap_vae, recurrence=1, **masked)
    with torch.inference_mode():
        picture = vae.decode(out["samples"]).movedim(-1, 1).clone()
    assert np.isclose(float(evaluation.masked_psnr(picture, image.movedim(-1, 1), known)), scores["replace"], atol=0.5)


def test_polish_steps_replace_the_terms_own_backward_steps_in_the_polish():
    term, latent, known = inpainting(backward_steps=2)
    counts = PassCounts()
    model, guidance, counted_decode, _ = counts.wrapped(GaussianDenoiser(eps_noise_scaling), (term,), decode, full_area=16)
    hold = held(latent, known, counts.counted("polish_decoder", decode, full_area=16))
    sample_universal_guidance(model, torch.randn(2, 2, 4, 4) * 14.6, sigmas_eps(STEPS), guidance=guidance,
                              decode=counted_decode, noise_scaling=eps_noise_scaling,
                              settings=Settings(known_pixels="replace", polish_steps=7), held=hold, disable=True)
    assert counts.forward["polish_decoder"] == 2 * 7
