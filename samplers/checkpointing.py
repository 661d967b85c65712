"""Gradient checkpointing of a host's modules for the guided backward, undone afterwards.

Each checkpointed block keeps only its inputs during the guided forward pass and recomputes its
activations in the backward pass: less memory for one more forward pass of the block.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterable, Iterator

import torch
import torch.utils.checkpoint

_NO_OWN_FORWARD = object()


def outermost_blocks(root: torch.nn.Module, is_block: Callable[[torch.nn.Module], bool]) -> list[torch.nn.Module]:
    """The submodules of `root` for which `is_block` holds and that lie inside no other such submodule."""
    blocks = []
    for child in root.children():
        if is_block(child):
            blocks.append(child)
        else:
            blocks.extend(outermost_blocks(child, is_block))
    return blocks


def _checkpointed_call(forward, *args, **kwargs):
    if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)  # no graph is recorded, so there is nothing to save


@contextlib.contextmanager
def checkpointed(blocks: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Within the block, every module in `blocks` runs under `torch.utils.checkpoint` when gradients are on.

    The modules get an instance `forward`, removed again on exit (an instance `forward` they had before is
    put back), so the host's modules are as they were afterwards, also after an error.
    """
    patched = []
    try:
        for block in blocks:
            patched.append((block, block.__dict__.get("forward", _NO_OWN_FORWARD)))
            block.forward = functools.partial(_checkpointed_call, block.forward)
        yield
    finally:
        for block, own_forward in reversed(patched):
            if own_forward is _NO_OWN_FORWARD:
                del block.forward
            else:
                block.forward = own_forward
