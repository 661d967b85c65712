"""The CFG batch split by branch, for the gradient path "unconditional": the loss reads the negative prompt's
x0, and the UNet's backward pass covers that branch of the batch only (the reference's object-location sampler)."""
from __future__ import annotations

import torch


def _rows(args: dict, which: int):
    """(row indices, the call's arguments) of the part of a UNet call's batch that belongs to `which` (0 = the
    prompt's rows, 1 = the negative's), or None if the call's inputs cannot be sliced (ControlNet's outputs, or a
    tensor of another batch size)."""
    chunks, x = args["cond_or_uncond"], args["input"]
    total, per = x.shape[0], x.shape[0] // len(args["cond_or_uncond"])
    index = torch.tensor([i * per + j for i, kind in enumerate(chunks) if kind == which for j in range(per)],
                         device=x.device)
    c = {}
    for key, value in args["c"].items():
        if key == "transformer_options":
            value = dict(value)
            kept = [i for i, kind in enumerate(chunks) if kind == which]
            for listed in ("cond_or_uncond", "uuids"):
                if isinstance(value.get(listed), list) and len(value[listed]) == len(chunks):
                    value[listed] = [value[listed][i] for i in kept]
        elif torch.is_tensor(value) and value.shape[:1] == (total,):
            value = value.index_select(0, index)
        elif value is not None:
            return None
        c[key] = value
    sliced = {"input": x.index_select(0, index), "timestep": args["timestep"].index_select(0, index), "c": c,
              "cond_or_uncond": [kind for kind in chunks if kind == which]}
    return index, sliced


def unconditional_branches(model, extra_args: dict):
    """The denoiser as `(x, σ) -> (x0 with CFG, the unconditional branch's x0)`, for the gradient path
    "unconditional": in the UNet's batch, the prompt's rows run without autograd and the negative prompt's with
    it, so the backward pass covers one branch of the CFG batch (the reference's object-location sampler). The
    unconditional x0 comes from ComfyUI's post-CFG hook, after its areas and masks. Without a negative branch
    (cfg 1) it is the x0 itself; where the batch cannot be sliced, both branches keep autograd."""
    model_options = dict(extra_args.get("model_options") or {})
    inner = model_options.get("model_function_wrapper")
    captured, branches_run = [], set()  # ComfyUI skips the negative branch at cfg 1 (its x0 reads as zeros then)

    def run(apply_model, args):
        return inner(apply_model, args) if inner else apply_model(args["input"], args["timestep"], **args["c"])

    def split(apply_model, args):
        chunks = args["cond_or_uncond"]
        branches_run.update(chunks)
        parts = [_rows(args, 0), _rows(args, 1)] if 0 in chunks and 1 in chunks and torch.is_grad_enabled() else []
        if not parts or None in parts:
            return run(apply_model, args)
        (cond_index, cond_args), (uncond_index, uncond_args) = parts
        with torch.no_grad():
            cond = run(apply_model, cond_args)
        uncond = run(apply_model, uncond_args)
        order = torch.argsort(torch.cat([cond_index, uncond_index]))
        return torch.cat([cond, uncond]).index_select(0, order)

    def capture(args):
        captured[:] = [args["uncond_denoised"] if 1 in branches_run else args["denoised"]]
        return args["denoised"]

    model_options["model_function_wrapper"] = split
    model_options["sampler_post_cfg_function"] = list(model_options.get("sampler_post_cfg_function", [])) + [capture]
    branch_args = {**extra_args, "model_options": model_options}

    def branches(x, sigma):
        branches_run.clear()
        x0 = model(x, sigma, **branch_args)
        return x0, captured.pop() if captured else x0  # a guider without CFG calls no post-CFG hook

    return branches
