"""Loading a state dict into a guidance network, with an error that says what to do when it does not fit."""
from __future__ import annotations

import torch


def load_strictly(network: torch.nn.Module, state_dict: dict, what: str, fix: str) -> None:
    """`network.load_state_dict(state_dict, strict=True)`; a mismatch raises ValueError naming `what`, the first problem and `fix`."""
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        lines = str(error).splitlines()
        first_problem = (lines[1] if len(lines) > 1 else lines[0]).strip()
        raise ValueError(f"The weights do not fit {what} ({first_problem}). {fix}") from error
