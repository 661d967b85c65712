"""The speed and memory levers of the engine, without ComfyUI: each gives finite, correctly shaped results,
and the same result as the default path where it should."""
from __future__ import annotations

import pytest
import torch

from gaussian import GaussianDenoiser, eps_noise_scaling, sigmas_eps
from samplers.checkpointing import checkpointed, outermost_blocks
from samplers.decoding import at_reduced_resolution
from samplers.precision import GuidancePrecision
from samplers.guide import Guide
from samplers.methods.ugd import guided_x0
from samplers.settings import Settings
from samplers.terms import GuidanceTerm
from samplers.universal_guidance import sample_universal_guidance
from test_engine import TargetLoss, decode, term


class Block(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, scale=1.0):
        return x + scale * torch.tanh(self.conv(x))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(2, 8, 1)
        self.body = torch.nn.Sequential(Block(8), torch.nn.Sequential(Block(8), Block(8)))
        self.head = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def input_gradient(net, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x).square().sum(), x)
    return grad


def test_checkpointing_gives_the_same_gradient_and_restores_the_modules():
    net, x = Net(), torch.randn(2, 2, 8, 8)
    blocks = outermost_blocks(net, lambda m: isinstance(m, Block))
    assert len(blocks) == 3
    expected = input_gradient(net, x)
    calls = []
    original = torch.utils.checkpoint.checkpoint
    try:
        torch.utils.checkpoint.checkpoint = lambda *a, **k: calls.append(1) or original(*a, **k)
        with checkpointed(blocks):
            got = input_gradient(net, x)
    finally:
        torch.utils.checkpoint.checkpoint = original
    assert len(calls) == 3
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert all("forward" not in block.__dict__ for block in blocks)


class InPlaceBlock(torch.nn.Module):
    """Adds into its input in place and returns it, as Flux's double block does with `txt`; its options dict is
    changed by the caller after the call, as Flux's model does from block to block."""

    def __init__(self, channels):
        super().__init__()
        self.linear = torch.nn.Linear(channels, channels)

    def forward(self, x, options):
        x += options["scale"] * torch.tanh(self.linear(x))
        return x


class InPlaceNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([InPlaceBlock(8), InPlaceBlock(8)])
        self.requires_grad_(False)  # as guidance freezes the host's parameters

    def forward(self, x):
        options = {}
        x = x * 1.0
        for i, block in enumerate(self.blocks):
            options["scale"] = i + 1.0
            x = block(x=x, options=options)
        return x


def test_checkpointing_a_block_that_changes_its_inputs_in_place_runs_it_on_copies_and_keeps_the_gradient():
    net, x = InPlaceNet(), torch.randn(2, 5, 8)
    expected = input_gradient(net, x)
    with checkpointed(net.blocks, private_inputs=net.blocks):
        torch.testing.assert_close(input_gradient(net, x), expected, rtol=1e-6, atol=1e-7)
    with checkpointed(net.blocks), pytest.raises(Exception):  # recomputed from the changed input
        torch.testing.assert_close(input_gradient(net, x), expected, rtol=1e-6, atol=1e-7)


def test_checkpointing_restores_an_earlier_instance_forward_also_after_an_error():
    net = Net()
    block = net.body[0]
    own = block.forward
    block.forward = own  # an instance forward set by someone else
    with pytest.raises(RuntimeError, match="stop"):
        with checkpointed([block, net.body[1][0]]):
            raise RuntimeError("stop")
    assert block.__dict__["forward"] is own
    assert "forward" not in net.body[1][0].__dict__


def test_checkpointed_blocks_run_plainly_without_gradients():
    net, x = Net(), torch.randn(1, 2, 8, 8)
    expected = net(x)
    with checkpointed(outermost_blocks(net, lambda m: isinstance(m, Block))), torch.inference_mode():
        torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("resolution, factor", [("half", 2), ("quarter", 4)])
def test_reduced_resolution_decoder_gives_a_full_size_image_from_a_smaller_decode(resolution, factor):
    seen = []

    def upsampling_decode(x0):
        seen.append(tuple(x0.shape[-2:]))
        return torch.sigmoid(torch.nn.functional.interpolate(x0[:, :3], scale_factor=8))

    x0 = torch.randn(2, 4, 16, 12, requires_grad=True)
    image = at_reduced_resolution(upsampling_decode, resolution)(x0)
    assert seen == [(16 // factor, 12 // factor)]
    assert image.shape == (2, 3, 128, 96)
    (grad,) = torch.autograd.grad(image.square().sum(), x0)
    assert grad.shape == x0.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert at_reduced_resolution(upsampling_decode, "full") is upsampling_decode
    with pytest.raises(ValueError, match="decode resolution"):
        at_reduced_resolution(upsampling_decode, "eighth")


def constant_noise_denoiser(eps):
    """x0 = x − σ·ε with ε fixed: its ∂x0/∂x is exactly I, so the x0-only gradient is exact for it."""
    return lambda x, sigma, **extra: x - sigma.reshape(-1, 1, 1, 1) * eps


def ugd_x0(model, gradient, x, sigma=2.0, **options):
    loss = TargetLoss(torch.full((1, 3, 4, 4), 0.9))
    active = [(term(loss, weight=0.05), loss.bind("cpu"))]
    return guided_x0(Guide(model, decode, gradient=gradient, **options), x, torch.full((x.shape[0],), sigma), active,
                     1.0, sigma)


def test_x0_only_gradient_equals_the_full_gradient_when_the_noise_prediction_is_constant():
    x = torch.randn(2, 2, 4, 4) * 2
    model = constant_noise_denoiser(torch.randn(2, 2, 4, 4))
    torch.testing.assert_close(ugd_x0(model, "x0_only", x), ugd_x0(model, "through_unet", x))


def test_x0_only_gradient_is_finite_and_points_the_same_way_on_a_real_denoiser():
    x = torch.randn(2, 2, 4, 4) * 2
    model = GaussianDenoiser(eps_noise_scaling)
    plain = model(x, torch.full((2,), 2.0))
    full, approx = (ugd_x0(model, g, x) - plain for g in ("through_unet", "x0_only"))
    assert approx.shape == full.shape and torch.isfinite(approx).all()
    assert torch.nn.functional.cosine_similarity(full.flatten(), approx.flatten(), dim=0) > 0.99
    assert not torch.allclose(full, approx)  # this denoiser's gain is not 1: the shortcut is an approximation


def test_guidance_every_nth_step_guides_only_those_steps():
    calls = []
    loss = TargetLoss(torch.zeros(1, 3, 4, 4))
    bound = loss.bind

    def counting_bind(device):
        fn = bound(device)
        return lambda image: calls.append(1) or fn(image)

    loss.bind = counting_bind
    denoiser = GaussianDenoiser(eps_noise_scaling)
    x = torch.randn(1, 2, 4, 4) * 8
    out = sample_universal_guidance(denoiser, x, sigmas_eps(10), guidance=(term(loss, weight=0.01),), decode=decode,
                                    noise_scaling=eps_noise_scaling, settings=Settings(recurrence=2, guidance_every=3),
                                    disable=True)
    assert len(calls) == 4 * 2  # steps 0, 3, 6, 9, two passes each
    assert denoiser.calls == 6 * 1 + 4 * 2
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="guidance_every"):
        sample_universal_guidance(denoiser, x, sigmas_eps(3), guidance=(term(loss, weight=0.01),), decode=decode,
                                  noise_scaling=eps_noise_scaling, settings=Settings(guidance_every=0), disable=True)


def test_guidance_end_guides_only_the_first_steps_within_each_terms_window():
    calls = []
    loss = TargetLoss(torch.zeros(1, 3, 4, 4))
    bound = loss.bind
    loss.bind = lambda device: (lambda fn: lambda image: calls.append(1) or fn(image))(bound(device))
    denoiser = GaussianDenoiser(eps_noise_scaling)
    x = torch.randn(1, 2, 4, 4) * 8

    def run(guidance_end, **window):
        calls.clear()
        sample_universal_guidance(denoiser, x, sigmas_eps(10), guidance=(term(loss, weight=0.01, **window),),
                                  decode=decode, noise_scaling=eps_noise_scaling,
                                  settings=Settings(recurrence=2, guidance_end=guidance_end), disable=True)
        return len(calls)

    assert run(0.3) == 3 * 2  # steps 0, 1 and 2, two passes each
    assert run(0.5, start_percent=0.2) == 3 * 2  # steps 2, 3 and 4: both windows hold
    assert run(1.0) == 10 * 2
    with pytest.raises(ValueError, match="guidance_end"):
        run(0.0)


class ConvDenoiser(torch.nn.Module):
    """A small convolutional denoiser, so that autocast has matrix products to lower."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = Net()

    def forward(self, x, sigma, **extra):
        return x - sigma.reshape(-1, 1, 1, 1) * self.net(x) * 0.1


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_autocast_is_finite_float32_and_close_to_full_precision(autocast):
    x = torch.randn(2, 2, 4, 4) * 2
    model = ConvDenoiser().requires_grad_(False)
    plain = model(x, torch.full((2,), 2.0))
    full = ugd_x0(model, "through_unet", x) - plain
    reduced = ugd_x0(model, "through_unet", x, precision=GuidancePrecision(autocast, "cpu")) - plain
    assert reduced.dtype == torch.float32 and torch.isfinite(reduced).all()
    assert torch.nn.functional.cosine_similarity(full.flatten(), reduced.flatten(), dim=0) > 0.98


def test_a_non_finite_pass_under_autocast_is_redone_in_full_precision(caplog):
    class OverflowsUnderAutocast(TargetLoss):
        def bind(self, device):
            fn = super().bind(device)
            return lambda image: fn(image) * (float("inf") if torch.is_autocast_enabled("cpu") else 1.0)

    x = torch.randn(2, 2, 4, 4) * 2
    model = ConvDenoiser().requires_grad_(False)
    target = torch.full((1, 3, 4, 4), 0.9)
    precision = GuidancePrecision("fp16", "cpu")
    active = [(term(OverflowsUnderAutocast(target), weight=0.05, backward_steps=2), OverflowsUnderAutocast(target).bind("cpu"))]
    reference = [(term(TargetLoss(target), weight=0.05, backward_steps=2), TargetLoss(target).bind("cpu"))]
    sigma = torch.full((2,), 2.0)
    got = guided_x0(Guide(model, decode, precision=precision), x, sigma, active, 1.0, 2.0)
    expected = guided_x0(Guide(model, decode), x, sigma, reference, 1.0, 2.0)
    torch.testing.assert_close(got, expected)
    assert precision.fell_back == 2  # the forward-guidance pass and the backward-guidance run
    assert precision.loss_scale < 2.0**12
    assert "redoing such passes in full precision" in caplog.text


def test_fp16_loss_scaling_gives_back_the_unscaled_gradient():
    precision = GuidancePrecision("fp16", "cpu")
    leaf = torch.randn(3, requires_grad=True)
    grad = precision.run(lambda: precision.gradient((leaf * 1e-6).sum(), leaf))
    torch.testing.assert_close(grad, torch.full((3,), 1e-6))
    with pytest.raises(ValueError, match="autocast"):
        GuidancePrecision("int8")
