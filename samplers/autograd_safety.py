"""Making modules created under `torch.inference_mode()` usable for backward passes.

ComfyUI runs every node in inference mode, so every loaded weight is an inference tensor, which
autograd refuses to save for backward. See shared research `comfyui-integration.md` §1.3 and §1.5.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def _unusable_for_autograd(t: torch.Tensor) -> bool:
    # An inference tensor, or one whose .data was replaced outside inference mode (no version counter).
    if t.is_inference():
        return True
    try:
        t._version
    except RuntimeError:
        return True
    return False


def make_autograd_safe(module: torch.nn.Module) -> int:
    """Replace inference-tensor parameters and buffers of `module` by normal clones.

    Replaces the Parameter and buffer objects, never `.data`, and freezes every parameter. Call it
    after the module is loaded on its device and outside any gradient block. Returns how many tensors
    were replaced.
    """
    replaced = 0
    with torch.inference_mode(False), torch.no_grad():
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is None:
                    continue
                if _unusable_for_autograd(p):
                    m._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                    replaced += 1
                elif p.requires_grad:
                    p.requires_grad_(False)
            for name, b in list(m._buffers.items()):
                if b is not None and _unusable_for_autograd(b):
                    m._buffers[name] = b.clone()
                    replaced += 1
    return replaced


@contextlib.contextmanager
def clone_saved_activations() -> Iterator[None]:
    """Save clones of non-leaf tensors for backward.

    Model code that adds residuals in place (`x += h`, as in the 2024 ComfyUI UNet) otherwise fails in
    backward with "modified by an inplace operation". Weights and constants are leaves and are not copied.
    """
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t if t.is_leaf else t.clone(), lambda t: t):
        yield


def is_inplace_autograd_error(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and "modified by an inplace operation" in str(error)


class Autograd:
    """Runs gradient computations outside inference mode.

    If the host model adds residuals in place, the first backward fails; the run then switches to cloning saved
    activations (same gradients, more memory) for good.
    """

    def __init__(self, clone_saved: bool = False):
        self.clone_saved = clone_saved

    def run(self, compute: Callable[[], T]) -> T:
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
