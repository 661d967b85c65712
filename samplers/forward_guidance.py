"""Forward guidance (paper eq. 6): the step Σ c_i·g_i that guidance takes from the denoiser's x0.

g_i is ∇ₓℓ_i(decode(x0(x))), taken through the denoiser and the decoder ("through_unet"), at x0 alone with
∂x0/∂x taken as I/a ("x0_only", MPGD's shortcut), or through the negative prompt's branch only ("unconditional").
A term whose loss reads the noisy latent (a noise-aware classifier) takes its gradient on x itself, with no
denoiser or decoder in the way. A rescaled term's g_i is scaled to RMS(ε̂) per sample, so that its c_i is a
fraction of the noise (the auto schedule). Each method chooses the c_i and where the step goes.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch

from .guide import Guide
from .terms import BoundLoss, GuidanceTerm


class ForwardTerm(NamedTuple):
    """One term's share of a forward-guidance step: its loss, its factor c_i, and whether g_i is rescaled to
    RMS(ε̂). A term with c_i = 0 takes no gradient."""

    term: GuidanceTerm
    loss: BoundLoss
    size: float
    rescaled: bool = False


def _rms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean square, shaped to broadcast over the sample."""
    return t.float().pow(2).flatten(1).mean(1).sqrt().reshape(-1, *([1] * (t.ndim - 1)))


def noise_rms(x: torch.Tensor, x0: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """RMS of the noise the denoiser predicts, ε̂ = (x − a·x0)/b, per sample (what rescaled terms are sized to)."""
    return _rms((x.detach() - a * x0.detach()) / b)


def forward_guidance(guide: Guide, x: torch.Tensor, sigma: torch.Tensor, terms: Sequence[ForwardTerm], a: float,
                     b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the denoiser's x0, Σ c_i·g_i), by the guide's gradient path."""
    on_x0 = [t for t in terms if t.size > 0 and not t.term.reads_noisy_input]
    on_noisy = [t for t in terms if t.size > 0 and t.term.reads_noisy_input]
    if not on_x0:
        x0 = guide.denoise(x, sigma)
        step = torch.zeros_like(x0)
    elif guide.gradient == "x0_only":
        x0 = guide.denoise(x, sigma)
        step = _at_x0(guide, x0, on_x0, a, noise_rms(x, x0, a, b))
    else:
        x0, step = _through_denoiser(guide, x, sigma, on_x0, a, b)
    if on_noisy:
        step = step + _at_noisy_input(guide, x, on_noisy, a, b, noise_rms(x, x0, a, b))
    return x0, step


def _through_denoiser(guide: Guide, x, sigma, terms: Sequence[ForwardTerm], a: float, b: float):
    """Eq. 6's gradient through the denoiser and decoder. On the "unconditional" path the loss reads the
    unconditional branch's x0 and the CFG term is added after the gradient, as the reference's object-location
    sampler does: `x0' = x0_cfg − c·∇ₓℓ(x0_uncond(x))`."""

    def compute():
        x_in = x.detach().clone().requires_grad_(True)
        sigma_in = sigma.clone()  # patches multiply x by σ, and autograd cannot save an inference-mode σ
        with guide.precision.autocast():
            if guide.gradient == "unconditional":
                x0, guided_x0 = guide.unconditional(x_in, sigma_in)
            else:
                x0 = guided_x0 = guide.denoise(x_in, sigma_in)
            guide.gradient_check.output(guided_x0)
            losses = _losses(guide, guide.decode(guided_x0), terms)

        def at_x0():  # the loss's own gradient, without the denoiser: what a blocked gradient is told apart by
            x0_in = guided_x0.detach().clone().requires_grad_(True)
            losses_at_x0 = _losses(guide, guide.decode(x0_in), terms)
            return guide.precision.gradient(sum(t.size * loss for t, loss in losses_at_x0), x0_in)

        step = _step(guide, losses, x_in, lambda g: g, noise_rms(x, x0.detach(), a, b),
                     check=lambda grad: guide.gradient_check.gradient(grad, at_x0, guide.update_mask is not None))
        return x0.detach().to(x.dtype), step.detach()

    return guide.differentiate(compute)


def _at_x0(guide: Guide, x0, terms: Sequence[ForwardTerm], a: float, rms_noise: torch.Tensor):
    """Eq. 6's step without the denoiser's backward pass: g_i = ∇_{x0}ℓ_i / a, confined to the update mask as the
    denoiser's own mask would confine it."""

    def compute():
        x0_in = x0.detach().clone().requires_grad_(True)
        with guide.precision.autocast():
            losses = _losses(guide, guide.decode(x0_in), terms)
        return _step(guide, losses, x0_in, lambda g: guide.masked(g) / a, rms_noise).detach()

    return guide.differentiate(compute)


def _at_noisy_input(guide: Guide, x, terms: Sequence[ForwardTerm], a: float, b: float, rms_noise: torch.Tensor):
    """Eq. 6's step for losses of the noisy latent: g_i = ∇ₓℓ_i(x/√(a²+b²), b/a), confined to the update mask."""
    radius = math.hypot(a, b)

    def compute():
        x_in = x.detach().clone().requires_grad_(True)
        at_x = [t._replace(loss=lambda z, fn=t.loss: fn(z, b / a)) for t in terms]
        with guide.precision.autocast():
            losses = _losses(guide, x_in / radius, at_x)
        return _step(guide, losses, x_in, guide.masked, rms_noise).detach()

    return guide.differentiate(compute)


def _losses(guide: Guide, image: torch.Tensor, terms: Sequence[ForwardTerm]) -> list[tuple[ForwardTerm, torch.Tensor]]:
    """[(term, Σ ℓ_i(image))] of the terms whose loss is finite; the others are warned about and left out."""
    losses = []
    for t in terms:
        loss = guide.loss(t.loss, t.term, image)
        if guide.precision.finite(loss):
            losses.append((t, loss.sum()))
        else:
            guide.warn(t.term, "loss")
    return losses


def _gradient(guide: Guide, losses: Sequence[tuple[GuidanceTerm, torch.Tensor]], leaf: torch.Tensor,
              more_follow: bool, check: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """∇_leaf of the sum of [(term, loss)], leaving out terms whose gradient is not finite (with a warning). The
    graph is kept for the culprit search and, if `more_follow`, for the backward passes after this one. `check`
    sees the full gradient first (a non-finite one under autocast is seen again in full precision)."""
    retain = more_follow or len(losses) > 1
    grad = guide.precision.gradient(sum(loss for _, loss in losses), leaf, retain_graph=retain)
    if check is not None and not (guide.precision.reduced and not torch.isfinite(grad).all()):
        check(grad)
    if guide.precision.finite(grad):
        return grad
    grad = torch.zeros_like(leaf)  # find the culprit; keep the others
    for term, loss in losses:
        g = guide.precision.gradient(loss, leaf, retain_graph=True)
        if torch.isfinite(g).all():
            grad = grad + g
        else:
            guide.warn(term, "gradient")
    return grad


def _step(guide: Guide, losses: Sequence[tuple[ForwardTerm, torch.Tensor]], leaf: torch.Tensor,
          project: Callable[[torch.Tensor], torch.Tensor], rms_noise: torch.Tensor,
          check: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Σ c_i·g_i, g_i = project(∇_leaf ℓ_i): the plain terms' in one backward pass, each rescaled term's in one of
    its own, rescaled to RMS(ε̂) per sample; `check` sees each raw gradient."""
    plain = [(t.term, t.size * loss) for t, loss in losses if not t.rescaled]
    rescaled = [(t, loss) for t, loss in losses if t.rescaled]
    step = torch.zeros_like(leaf)
    if plain:
        step = step + project(_gradient(guide, plain, leaf, more_follow=bool(rescaled), check=check))
    for i, (t, loss) in enumerate(rescaled):
        grad = project(_gradient(guide, [(t.term, loss)], leaf, more_follow=i < len(rescaled) - 1, check=check))
        step = step + t.size * rms_noise * grad / _rms(grad).clamp_min(torch.finfo(grad.dtype).tiny)
    return step
