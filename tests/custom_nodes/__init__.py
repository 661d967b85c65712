"""Test-only custom nodes, installed beside the pack by the tests' ComfyUI (tests/conftest.py) and server
(tests/test_server_reliability.py): a guidance whose network raises, or returns NaN, at every call; a MODEL
pass-through that runs after a given LATENT (to order a graph's samplers); and another pack's
model_function_wrapper, which counts its calls."""
from __future__ import annotations

import sys

import torch


def _pack_module(name: str):
    return next(module for key, module in sys.modules.items() if key.endswith(f"comfyui_universal_guidance.{name}"))


class FaultyLoss:
    def __init__(self, fault: str):
        self.fault = fault

    def check(self, batch, height, width):
        pass

    def bind(self, device):
        def loss(image):
            if self.fault == "raise":
                raise RuntimeError("the test network cannot run")
            return image.flatten(1).mean(1) * float("nan")

        return loss


class FaultyGuidance:
    CATEGORY = "universal_guidance/tests"
    RETURN_TYPES = ("UGD_GUIDANCE",)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"fault": (["raise", "nan"],), "backward_steps": ("INT", {"default": 1, "min": 0})}}

    def guide(self, fault, backward_steps):
        terms = _pack_module("samplers.terms")
        return ((terms.GuidanceTerm(name=f"faulty guidance ({fault})", loss=FaultyLoss(fault), weight=1.0,
                                    backward_steps=backward_steps),),)


class ModelAfter:
    """The MODEL, unchanged, once `after` exists: a sampler fed by it runs after the sampler that made `after`."""

    CATEGORY = "universal_guidance/tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "after"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "after": ("LATENT",)}}

    def after(self, model, after):
        return (model,)


WRAPPER_CALLS = [0, 0]  # how often OtherWrapper's wrapper ran in this process, and how often with autograd on


class OtherWrapper:
    """Another pack's model_function_wrapper on the MODEL, counting its calls in WRAPPER_CALLS."""

    CATEGORY = "universal_guidance/tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def patch(self, model):
        def wrapper(apply_model, args):
            WRAPPER_CALLS[0] += 1
            WRAPPER_CALLS[1] += int(torch.is_grad_enabled())
            return apply_model(args["input"], args["timestep"], **args["c"])

        model = model.clone()
        model.set_model_unet_function_wrapper(wrapper)
        return (model,)


NODE_CLASS_MAPPINGS = {"UGDTestFaultyGuidance": FaultyGuidance, "UGDTestModelAfter": ModelAfter,
                       "UGDTestOtherWrapper": OtherWrapper}
