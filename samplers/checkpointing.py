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


def _private(value):
    """A tensor cloned, a dict copied (see `checkpointed`'s private_inputs)."""
    if torch.is_tensor(value):
        return value.clone()
    return dict(value) if isinstance(value, dict) else value


def _on_private_inputs(forward, *args, **kwargs):
    return forward(*map(_private, args), **{k: _private(v) for k, v in kwargs.items()})


def _checkpointed_call(forward, *args, private: bool = False, **kwargs):
    if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
        if private:  # what the checkpoint keeps for the recomputation, as it was at the call
            kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
            forward = functools.partial(_on_private_inputs, forward)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)  # no graph is recorded, so there is nothing to save


@contextlib.contextmanager
def checkpointed(blocks: Iterable[torch.nn.Module], private_inputs: Iterable[torch.nn.Module] = ()) -> Iterator[None]:
    """Within the block, every module in `blocks` runs under `torch.utils.checkpoint` when gradients are on.

    A module in `private_inputs` runs on copies of its tensor and dict inputs: one that changes its inputs in place
    and returns them (Flux's double block adds into `txt`, its model updates transformer_options from block to
    block) would otherwise be recomputed from the changed values. The others keep the host's in-place side
    effects, which later blocks may read.

    The modules get an instance `forward`, removed again on exit (an instance `forward` they had before is
    put back), so the host's modules are as they were afterwards, also after an error.
    """
    patched, private = [], {id(block) for block in private_inputs}
    try:
        for block in blocks:
            patched.append((block, block.__dict__.get("forward", _NO_OWN_FORWARD)))
            block.forward = functools.partial(_checkpointed_call, block.forward, private=id(block) in private)
        yield
    finally:
        for block, own_forward in reversed(patched):
            if own_forward is _NO_OWN_FORWARD:
                del block.forward
            else:
                block.forward = own_forward
