"""Algorithm 1 of Bansal et al. (2023), Universal Guidance for Diffusion Models, as a k-diffusion sampler.

Works in ComfyUI's parameterisation `x = a(σ)·x0 + b(σ)·ε`, with a denoiser `model(x, σ) -> x0`
(classifier-free guidance already applied) and a differentiable `decode(x0) -> image in [0, 1]`.
Per step, k times (self-recurrence, eq. 10):
  1. forward guidance (eq. 6):  x0' = x0 − Σ_i s_i(t)·(b/a)·√(a²+b²)·∇ₓℓ_i(decode(x0(x)))
  2. backward guidance (eq. 7–9): x0' += Δ_i,  Δ_i ≈ argmin_Δ ℓ_i(decode(x0' + Δ)), m_i optimiser steps
  3. base step from σ to σ' with x0' (DDIM, or DDPM-like when η > 0)
  4. unless it is the last pass, re-noise back to σ.

The other methods of the training-free family (FreeDoM, MPGD, DPS, TFG) are other guided passes of the same loop
(samplers/methods): each says where its steps go, and the loop takes `x' = base_step(x, x0) + shift`.

A term with the "auto" schedule takes its gradient rescaled to the predicted noise's RMS, so that its w is a
fraction of the noise rather than a number that depends on the loss and the model (`forward_guidance_scale`).

Cheaper variants (options, off by default): forward guidance with the gradient taken at x0 instead of
through the denoiser ("x0_only", MPGD's shortcut: ∇ₓℓ ≈ ∇_{x0}ℓ / a, as if the predicted noise did not
depend on x), guidance on every N-th step only or in the first steps only, and the guided passes under autocast.
With those windows, backward guidance can go on alone on the steps they leave plain (`backward_end`), and
steps with backward guidance can take a recurrence of their own (`backward_recurrence`).
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from .autograd_safety import clone_saved_activations, is_inplace_autograd_error
from .decoding import Decode
from .methods import METHODS, GuidedPass, tfg
from .pass_counts import PassCounts
from .parameterization import NoiseScaling, alpha_bar, forward_guidance_scale, noise_coefficients
from .precision import GuidancePrecision
from .progress import PassLosses, PassReport, term_labels
from .terms import BoundLoss, GuidanceTerm

log = logging.getLogger(__name__)

BASE_STEPS = ("ddim", "ddpm")
GRADIENT_PATHS = ("through_unet", "x0_only", "unconditional")
_RECURRENCE_SEED_SALT = 0x9E3779B97F4A7C15  # keeps re-noising noise apart from the initial noise of the same seed


def base_step(x, x0, a, b, a_next, b_next, eta=0.0, noise=None):
    """One DDIM step from σ to σ' with predicted x0; η = 0 is k-diffusion's Euler step, η = 1 is DDPM.

    In DDPM terms `z' = √ᾱ'·x0 + √(1 − ᾱ' − σ_η²)·ε + σ_η·n`, with
    `σ_η = η·√((1 − ᾱ')/(1 − ᾱ))·√(1 − ᾱ/ᾱ')`, scaled back to x by √(a'² + b'²).
    """
    eps = (x - a * x0) / b
    if eta == 0 or b_next == 0:
        return a_next * x0 + b_next * eps
    ab, ab_next = alpha_bar(a, b), alpha_bar(a_next, b_next)
    sigma_eta = eta * math.sqrt((1 - ab_next) / (1 - ab) * max(0.0, 1 - ab / ab_next))
    up = min(b_next, sigma_eta * math.hypot(a_next, b_next))
    return a_next * x0 + math.sqrt(b_next * b_next - up * up) * eps + up * noise


def renoise(x_next, a_next, b_next, a, b, noise):
    """Eq. 10 in ComfyUI's terms: take x from σ' back to σ, `x_σ = (a/a')·x' + √(b² − (a·b'/a')²)·ε`."""
    ratio = a / a_next
    return ratio * x_next + math.sqrt(max(0.0, b * b - (ratio * b_next) ** 2)) * noise


class _Autograd:
    """Runs gradient computations outside inference mode.

    If the host model adds residuals in place, the first backward fails; the run then switches to
    cloning saved activations (same gradients, more memory) for good.
    """

    def __init__(self, clone_saved: bool):
        self.clone_saved = clone_saved

    def run(self, compute: Callable[[], Any]) -> Any:
        while True:
            guard = clone_saved_activations() if self.clone_saved else contextlib.nullcontext()
            try:
                with torch.inference_mode(False), torch.enable_grad(), guard:
                    return compute()
            except RuntimeError as error:
                if self.clone_saved or not is_inplace_autograd_error(error):
                    raise
                log.info("Universal guidance: the model adds residuals in place; cloning saved activations.")
                self.clone_saved = True


class _WarnOnce:
    def __init__(self):
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, term: GuidanceTerm, what: str) -> None:
        if (term.name, what) not in self.seen:
            self.seen.add((term.name, what))
            log.warning("Universal guidance: %s gave a non-finite %s; skipping it at that step.", term.name, what)


def _checked_loss(loss_fn: BoundLoss, image: torch.Tensor, term: GuidanceTerm) -> torch.Tensor:
    try:
        loss = loss_fn(image)
    except torch.OutOfMemoryError:
        raise  # the host says what to change
    except Exception as error:
        raise RuntimeError(f"{term.name}: its guidance network failed ({type(error).__name__}: {error}).") from error
    if loss.shape != (image.shape[0],):
        raise ValueError(f"{term.name}: its loss must have shape ({image.shape[0]},), got {tuple(loss.shape)}.")
    return loss


def _rms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean square, shaped to broadcast over the sample."""
    return t.float().pow(2).flatten(1).mean(1).sqrt().reshape(-1, *([1] * (t.ndim - 1)))


def noise_rms(x: torch.Tensor, x0: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """RMS of the noise the denoiser predicts, ε̂ = (x − a·x0)/b, per sample (what "auto" strength is relative to)."""
    return _rms((x.detach() - a * x0.detach()) / b)


class GuidedDenoiser:
    """The denoiser with universal guidance applied to its x0 (eq. 6–9).

    Args:
        model: denoiser, `model(x, σ·ones(B), **extra_args) -> x0`.
        decode: differentiable `x0 -> image (B, 3, H, W)` in [0, 1].
        extra_args: passed to the model.
        check_interrupt: raises to stop; called before every backward step.
        update_mask: 1 where guidance may change x0 directly (backward guidance, x0-only forward guidance),
            0 where it must not.
        clone_saved: clone saved activations from the start (see `clone_saved_activations`).
        gradient: "through_unet" (eq. 6 exactly), "x0_only" (no backward pass through the denoiser), or
            "unconditional" (the loss on the unconditional x0, its gradient through that branch only).
        precision: autocast and loss scaling of the guided passes; full precision by default.
        unconditional: for "unconditional", `(x, σ) -> (x0 with CFG, the unconditional branch's x0)`, from the host.
        counts: if given, counts the backward-guidance steps.
    """

    def __init__(self, model, decode: Decode, extra_args: dict, check_interrupt=lambda: None,
                 update_mask: torch.Tensor | None = None, clone_saved: bool = False,
                 gradient: str = "through_unet", precision: GuidancePrecision | None = None,
                 unconditional: Callable | None = None, counts: PassCounts | None = None):
        if gradient not in GRADIENT_PATHS:
            raise ValueError(f"Unknown gradient path {gradient!r}: use one of {GRADIENT_PATHS}.")
        if gradient == "unconditional" and unconditional is None:
            raise ValueError("The gradient path 'unconditional' needs the host's two-branch denoiser.")
        self.unconditional = unconditional
        self.model, self.decode, self.extra_args = model, decode, extra_args
        self.check_interrupt, self.update_mask = check_interrupt, update_mask
        self.gradient, self.precision = gradient, precision or GuidancePrecision()
        self.autograd, self.warn = _Autograd(clone_saved), _WarnOnce()
        self.counts = counts

    def __call__(self, x, sigma, active: Sequence[tuple[GuidanceTerm, BoundLoss]], a: float, b: float,
                 forward: bool = True):
        """x0 after forward guidance (unless `forward` is false), then backward guidance, by the active (term,
        bound loss) pairs."""
        scales = [(t, fn, forward_guidance_scale(t.schedule, t.weight, a, b)) for t, fn in active] if forward else []
        x0, step = self.forward_step(x, sigma, scales, a, b)
        x0 = x0 - step
        deltas = [self.backward_delta_or_warn(x0, term, loss_fn) for term, loss_fn in active if term.backward_steps > 0]
        deltas = [delta for delta in deltas if delta is not None]
        return x0 + sum(deltas) if deltas else x0

    def forward_step(self, x, sigma, weighted_losses, a: float, b: float):
        """(the denoiser's x0, Σ c_i·g_i) for [(term, loss, c_i)]: g_i is ∇ₓℓ_i, through the denoiser or at x0 as
        `gradient` says, or rescaled for auto terms; terms with c_i = 0 take no gradient. Terms that read the noisy
        latent take theirs at x itself, whatever `gradient` says."""
        weighted = [(t, fn, c) for t, fn, c in weighted_losses if c > 0 and not t.reads_noisy_input]
        on_noisy = [(t, fn, c) for t, fn, c in weighted_losses if c > 0 and t.reads_noisy_input]
        if not weighted:
            x0 = self.model(x, sigma, **self.extra_args)
            step = torch.zeros_like(x0)
        elif self.gradient == "x0_only":
            x0 = self.model(x, sigma, **self.extra_args)
            step = self.step_at_x0(x0, weighted, a, noise_rms(x, x0, a, b))
        else:
            x0, step = self.step_through_unet(x, sigma, weighted, a, b)
        if on_noisy:
            step = step + self.step_at_noisy_input(x, on_noisy, a, b, noise_rms(x, x0, a, b))
        return x0, step

    def smoothed(self, noise: torch.Tensor) -> "GuidedDenoiser":
        """This denoiser with every guidance loss read at x0 + noise (TFG's smoothing)."""
        copy = object.__new__(GuidedDenoiser)
        copy.__dict__.update(self.__dict__)
        copy.decode = lambda x0: self.decode(x0 + noise)
        return copy

    def backward_delta_or_warn(self, x0, term: GuidanceTerm, loss_fn: BoundLoss):
        delta = self.backward_delta(x0, term, loss_fn)
        if delta is None:
            self.warn(term, "backward-guidance loss or gradient")
        return delta

    def _in_precision(self, compute: Callable[[bool], Any]) -> Any:
        """compute(reduced) under autocast when asked for; redone in full precision if it returns None then."""
        if self.precision.reduced:
            result = self.autograd.run(lambda: compute(True))
            if result is not None:
                return result
            self.precision.non_finite()
        return self.autograd.run(lambda: compute(False))

    def _weighted_losses(self, image, weighted_losses, reduced: bool):
        """[(term, Σ ℓ_i(image), c_i)] of the terms whose loss is finite (the others are warned about).

        Returns None if a loss is not finite under reduced precision (the caller redoes it in full).
        """
        weighted = []
        for term, loss_fn, scale in weighted_losses:
            loss = _checked_loss(loss_fn, image, term).float()
            if torch.isfinite(loss).all():
                weighted.append((term, loss.sum(), scale))
            elif reduced:
                return None
            else:
                self.warn(term, "loss")
        return weighted

    def _gradient(self, losses, leaf, reduced: bool, more_follow: bool):
        """∇_leaf of the sum of [(term, loss)], leaving out terms whose gradient is not finite (with a warning).

        Returns None if the gradient is not finite under reduced precision. The graph is kept for the culprit
        search and, if `more_follow`, for the backward passes after this one.
        """
        retain = more_follow or len(losses) > 1
        grad = self.precision.gradient(sum(loss for _, loss in losses), leaf, reduced, retain_graph=retain)
        if torch.isfinite(grad).all():
            return grad
        if reduced:
            return None
        grad = torch.zeros_like(leaf)  # find the culprit; keep the others
        for term, loss in losses:
            g = self.precision.gradient(loss, leaf, False, retain_graph=True)
            if torch.isfinite(g).all():
                grad = grad + g
            else:
                self.warn(term, "gradient")
        return grad

    def _guidance_step(self, weighted, leaf, reduced: bool, project: Callable, rms_noise: torch.Tensor):
        """Σ c_i·g_i: g_i = project(∇_leaf ℓ_i), the raw terms' in one backward pass and each auto term's in one
        of its own, rescaled to RMS(ε̂) per sample (`forward_guidance_scale`). None as `_gradient` gives it."""
        if weighted is None:
            return None
        raw = [(term, scale * loss) for term, loss, scale in weighted if term.schedule != "auto"]
        auto = [(term, loss, scale) for term, loss, scale in weighted if term.schedule == "auto"]
        step = torch.zeros_like(leaf)
        if raw:
            grad = self._gradient(raw, leaf, reduced, more_follow=bool(auto))
            if grad is None:
                return None
            step = step + project(grad)
        for i, (term, loss, scale) in enumerate(auto):
            grad = self._gradient([(term, loss)], leaf, reduced, more_follow=i < len(auto) - 1)
            if grad is None:
                return None
            grad = project(grad)
            step = step + scale * rms_noise * grad / _rms(grad).clamp_min(torch.finfo(grad.dtype).tiny)
        return step

    def step_through_unet(self, x, sigma, weighted_losses, a: float, b: float):
        """Eq. 6's gradient, taken through the denoiser and decoder: (x0, Σ c_i·g_i). With the "unconditional"
        path the loss reads the unconditional branch's x0 and the CFG term is added after the gradient, as the
        reference's object-location sampler does: `x0' = x0_cfg − c·∇ₓℓ(x0_uncond(x))`."""

        def compute(reduced: bool):
            x_in = x.detach().clone().requires_grad_(True)
            with self.precision.autocast(reduced):
                if self.gradient == "unconditional":
                    x0, guided_x0 = self.unconditional(x_in, sigma)
                else:
                    x0 = guided_x0 = self.model(x_in, sigma, **self.extra_args)
                weighted = self._weighted_losses(self.decode(guided_x0), weighted_losses, reduced)
            step = self._guidance_step(weighted, x_in, reduced, lambda g: g, noise_rms(x, x0.detach(), a, b))
            return None if step is None else (x0.detach().to(x.dtype), step.detach())

        return self._in_precision(compute)

    def step_at_x0(self, x0, weighted_losses, a: float, rms_noise: torch.Tensor):
        """Eq. 6's step without the denoiser's backward pass: g_i from ∇_{x0}ℓ_i / a (∂x0/∂x taken as I/a).

        The gradient is confined to the update mask, as the denoiser's own mask would confine it.
        """
        mask = self.update_mask

        def project(grad):
            return (grad if mask is None else grad * mask) / a

        def compute(reduced: bool):
            x0_in = x0.detach().clone().requires_grad_(True)
            with self.precision.autocast(reduced):
                weighted = self._weighted_losses(self.decode(x0_in), weighted_losses, reduced)
            step = self._guidance_step(weighted, x0_in, reduced, project, rms_noise)
            return None if step is None else step.detach()

        return self._in_precision(compute)

    def step_at_noisy_input(self, x, weighted_losses, a: float, b: float, rms_noise: torch.Tensor):
        """Eq. 6's step for losses of the noisy latent (classifier guidance): g_i = ∇ₓℓ_i(x/√(a²+b²), b/a), with no
        denoiser or decoder in the way; confined to the update mask, as the denoiser confines its own output."""
        mask, radius = self.update_mask, math.hypot(a, b)

        def compute(reduced: bool):
            x_in = x.detach().clone().requires_grad_(True)
            at_x = [(term, lambda z, fn=fn: fn(z, b / a), scale) for term, fn, scale in weighted_losses]
            with self.precision.autocast(reduced):
                weighted = self._weighted_losses(x_in / radius, at_x, reduced)
            step = self._guidance_step(weighted, x_in, reduced, lambda g: g if mask is None else g * mask, rms_noise)
            return None if step is None else step.detach()

        return self._in_precision(compute)

    def backward_delta(self, x0, term: GuidanceTerm, loss_fn: BoundLoss):
        """Eq. 7–9: Δ ≈ argmin_Δ ℓ(decode(x0 + Δ)) by `term.backward_steps` optimiser steps from Δ = 0.

        Δ is confined to the update mask. Returns None when the loss or its gradient is not finite.
        """
        non_finite = object()

        def compute(reduced: bool):
            base = x0.detach().clone()
            mask = None if self.update_mask is None else self.update_mask.clone()
            delta = torch.zeros_like(base, requires_grad=True)
            optimizer_class = torch.optim.Adam if term.optimizer == "adam" else torch.optim.SGD
            optimizer = optimizer_class([delta], lr=term.backward_lr)
            for _ in range(term.backward_steps):
                self.check_interrupt()
                masked = delta if mask is None else delta * mask
                with self.precision.autocast(reduced):
                    loss = _checked_loss(loss_fn, self.decode(base + masked), term).float()
                grad = self.precision.gradient(loss.sum(), delta, reduced) if torch.isfinite(loss).all() else None
                if grad is None or not torch.isfinite(grad).all():
                    return None if reduced else non_finite
                if self.counts is not None:
                    self.counts.backward_guidance_steps += base.shape[0]
                delta.grad = grad
                optimizer.step()
            return (delta if mask is None else delta * mask).detach()

        result = self._in_precision(compute)
        return None if result is non_finite else result


def _counted_branches(counts: PassCounts, branches: Callable) -> Callable:
    """The two-branch denoiser, counted as one denoiser pass forward and half of one backward (one CFG branch)."""

    def call(x, sigma):
        x0, unconditional_x0 = branches(x, sigma)
        counts.add("denoiser", x0.detach(), x.shape[0])
        return x0, counts.add("denoiser", unconditional_x0, 0.0, backward_images=x.shape[0] / 2)

    return call


def step_plan(bound, i: int, steps: int, recurrence: int, guidance_every: int, guidance_end: float,
              backward_end: float, backward_recurrence: int) -> tuple[bool, list, int]:
    """(whether step i is guided, its active (term, loss) pairs, its passes), by the sampler's windows."""
    guided_step = i % guidance_every == 0 and i / steps < guidance_end
    if guided_step:
        active = [(term, fn) for term, fn in bound if term.active_at(i, steps)]
    elif i / steps < backward_end:  # backward guidance alone
        active = [(term, fn) for term, fn in bound if term.backward_steps > 0 and term.active_at(i, steps)]
    else:
        active = []
    if not active:
        return guided_step, active, 1
    if backward_recurrence and any(term.backward_steps > 0 for term, _ in active):
        return guided_step, active, backward_recurrence
    return guided_step, active, recurrence if guided_step else 1


def sample_universal_guidance(
    model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback=None,
    disable: bool | None = None,
    *,
    guidance: Sequence[GuidanceTerm],
    decode: Decode,
    noise_scaling: NoiseScaling,
    recurrence: int = 1,
    base: str = "ddim",
    eta: float | None = None,
    seed: int | None = None,
    check_interrupt: Callable[[], None] = lambda: None,
    clone_saved: bool = False,
    update_mask: torch.Tensor | None = None,
    guidance_every: int = 1,
    guidance_end: float = 1.0,
    backward_end: float = 0.0,
    backward_recurrence: int = 0,
    gradient: str = "through_unet",
    autocast: str = "off",
    counts: PassCounts | None = None,
    method: str = "ugd",
    smoothing: float = 0.0,
    rho_schedule: str = "increase",
    mu_schedule: str = "increase",
    smoothing_schedule: str = "decrease",
    unconditional: Callable | None = None,
    on_pass: Callable[[PassReport], None] | None = None,
) -> torch.Tensor:
    """Universal guided sampling (Algorithm 1), a k-diffusion sampler function.

    Args:
        model: denoiser, `model(x, σ·ones(B), **extra_args) -> x0`.
        x: (B, C, h, w) latent at sigmas[0], already noised.
        sigmas: descending noise levels.
        guidance: the guidance terms.
        decode: differentiable `x0 -> image (B, 3, H, W)` in [0, 1], not clamped.
        noise_scaling: `model_sampling.noise_scaling`, which gives a(σ) and b(σ).
        recurrence: k, denoising passes per step where any term is active (1 = no recurrence).
        base: "ddim" (η = 0) or "ddpm" (η = 1); `eta` overrides η.
        seed: seeds the re-noising and ancestral noise; defaults to extra_args["seed"].
        check_interrupt: raises to stop sampling; called before every denoiser pass and backward step.
        clone_saved: clone saved activations from the start (see `clone_saved_activations`).
        update_mask: 1 where backward guidance may change x0, 0 where it must not (e.g. an inpainting
            mask, which the denoiser already applies to its own output and to forward guidance).
        guidance_every: guide only steps 0, N, 2N, …; the others are plain steps, taken once.
        guidance_end: guide only the first fraction of the steps, within each term's own window.
        backward_end: in the first fraction of the steps, the steps that guidance_every and guidance_end leave
            plain still take backward guidance, without forward guidance, in `backward_recurrence` passes or
            one (0 = none do).
        backward_recurrence: k instead of `recurrence` on the steps where a term with backward steps is active,
            the guided ones and backward_end's (0 = recurrence on the guided steps, one pass on backward_end's):
            each of their passes costs m more decoder passes.
        gradient: "through_unet" (eq. 6), "x0_only" (forward guidance without the denoiser's backward), or
            "unconditional" (the gradient through the unconditional branch only, the CFG term added after it).
        autocast: "off", "bf16" or "fp16": the precision of the guided passes (see `GuidancePrecision`).
        counts: if given, counts the denoiser's and the guidance losses' passes as they run (the caller, who
            builds `decode` and the model, counts the decoder and the network inside the denoiser).
        method: how a guided pass places its steps, one of `methods.METHODS` (ugd, the paper's, by default).
        smoothing: TFG's γ̄, the loss read at x0 + γ̄·√(1 − ᾱ)·n (the tfg method only).
        rho_schedule, mu_schedule, smoothing_schedule: TFG's schedules of ρ_t, μ_t and γ_t over the steps
            (`methods.tfg`; the tfg method only).
        unconditional: for gradient "unconditional", `(x, σ) -> (x0 with CFG, the unconditional x0)`, from the
            host, which alone can run the branches apart.
        on_pass: called after every denoiser pass with its `progress.PassReport` (the terms' losses, progress
            in passes); the step bar counts passes and shows the losses too.
    """
    if recurrence < 1:
        raise ValueError(f"recurrence (k) must be at least 1, got {recurrence}.")
    if guidance_every < 1:
        raise ValueError(f"guidance_every must be at least 1, got {guidance_every}.")
    if not 0.0 < guidance_end <= 1.0:
        raise ValueError(f"guidance_end must be in (0, 1], got {guidance_end}.")
    if not 0.0 <= backward_end <= 1.0:
        raise ValueError(f"backward_end must be in [0, 1], got {backward_end}.")
    if backward_recurrence < 0:
        raise ValueError(f"backward_recurrence must be at least 0 (0 = recurrence), got {backward_recurrence}.")
    if method not in METHODS:
        raise ValueError(f"Unknown guidance method {method!r}: use one of {tuple(METHODS)}.")
    tfg_settings = tfg.Settings(smoothing, rho_schedule, mu_schedule, smoothing_schedule)
    if base not in BASE_STEPS:
        raise ValueError(f"Unknown base step {base!r}: use one of {BASE_STEPS}.")
    eta = (1.0 if base == "ddpm" else 0.0) if eta is None else eta
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}.")
    extra_args = {} if extra_args is None else extra_args
    seed = int(extra_args.get("seed") or 0) if seed is None else int(seed)
    generator = torch.Generator().manual_seed((seed ^ _RECURRENCE_SEED_SALT) % 2**64)

    def randn():
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)

    losses = PassLosses()
    with torch.inference_mode(False):
        bound = [(term, losses.watched(label, term.loss.bind(x.device)))
                 for term, label in zip(guidance, term_labels(guidance))]
    if counts is not None:
        model = counts.counted("denoiser", model)
        bound = [(term, counts.counted("guidance_network", fn)) for term, fn in bound]
        unconditional = unconditional and _counted_branches(counts, unconditional)
    precision = GuidancePrecision(autocast, x.device.type)
    guided = GuidedDenoiser(model, decode, extra_args, check_interrupt, update_mask, clone_saved, gradient, precision,
                            unconditional, counts)
    s_in = x.new_ones([x.shape[0]])
    steps = len(sigmas) - 1
    coefficients = [noise_coefficients(noise_scaling, s) for s in sigmas]
    alpha_steps = [alpha_bar(*coefficients[i]) / alpha_bar(*coefficients[i + 1]) for i in range(steps)]
    guided_pass = METHODS[method]
    tfg_run = tfg_settings.over(alpha_steps)
    plan = [step_plan(bound, i, steps, recurrence, guidance_every, guidance_end, backward_end, backward_recurrence)
            for i in range(steps)]
    done, total = 0, sum(passes for _, _, passes in plan)
    with tqdm(total=total, disable=disable, unit="pass") as bar:
        for i, (guided_step, active, passes) in enumerate(plan):
            sigma = sigmas[i]
            (a, b), (a_next, b_next) = coefficients[i], coefficients[i + 1]
            for r in range(passes):
                check_interrupt()
                if active:
                    x0, shift = guided_pass(GuidedPass(guided, x, sigma * s_in, active, a, b, a_next, b_next,
                                                       guided_step, alpha_steps, i, tfg_run, randn))
                else:
                    x0, shift = model(x, sigma * s_in, **extra_args), 0
                x_next = base_step(x, x0, a, b, a_next, b_next, eta, randn() if eta > 0 and b_next > 0 else None) + shift
                if r < passes - 1:
                    x = renoise(x_next, a_next, b_next, a, b, randn())
                done += 1
                report = PassReport(i, steps, r, passes, done, total, losses.take(), x_next, x0)
                if report.losses:
                    bar.set_postfix_str(report.text(), refresh=False)
                bar.update()
                if on_pass is not None:
                    on_pass(report)
            x = x_next
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})
    return x
