"""A test-only custom node for the server reliability tests: a guidance whose network raises, or returns NaN,
at every call. The server of tests/test_server_reliability.py installs it beside the pack."""
from __future__ import annotations

import sys


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


NODE_CLASS_MAPPINGS = {"UGDTestFaultyGuidance": FaultyGuidance}
