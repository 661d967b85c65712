"""The extra memory of a guided pass over an unguided one, for SDXL and Flux at 1024 px, and what fits a GPU.

    bash bench/guidance-memory          (needs ComfyUI 0.3.64 or newer, for Flux: tools/setup-current-host)

A guided pass keeps, between its forward and its backward pass, every tensor autograd saves for the backward;
an unguided pass keeps none. That is its extra peak memory, counted here by a saved-tensors hook (each storage
once) on PyTorch's meta device, so that the real architectures cost no memory or time:

- ComfyUI's own SDXL UNet and Flux transformer and their VAE decoders, at their real sizes and with the stand-ins'
  small sizes (nodes/stand_in_families.py), both at the latent of a 1024 px image;
- attention counted as PyTorch's fused attention saves it on a GPU (q, k, v, the output and one value per query
  row), not as the meta device's math kernel would (the whole attention matrix);
- the paths: the gradient through the UNet (CFG's batch of 2, or 1 for Flux's guidance-distilled model), with
  gradient checkpointing (each block keeps its inputs, and one block's activations are recomputed at a time), with
  x0_only (the decoder alone), and through the unconditional branch only (half the UNet's batch).

The GPU estimate adds the weights (fp16 SDXL, fp8 and bf16 Flux, as ComfyUI loads them), ComfyUI's own estimate
of the unguided pass's working memory (`BaseModel.memory_required`), a guidance network (CLIP ViT-B/16, fp16) and
1 GB for the CUDA context. Results go to bench-output/guidance-memory/ (--out); docs/troubleshooting.md quotes
bench/frontier/guidance-memory/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 2**30
LATENT = 128  # 1024 px / 8
SDXL = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "context_dim": 2048, "num_head_channels": 64,
        "use_linear_in_transformer": True, "adm_in_channels": 2816, "num_classes": "sequential",
        "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
        "use_temporal_resblock": False, "use_checkpoint": False}
FLUX = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
        "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
        "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True}
VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
       "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
# weights as ComfyUI loads them, in GB: SDXL's UNet in fp16; Flux dev's transformer in fp8 (weight_dtype) or bf16
WEIGHTS_GB = {"sdxl": {"fp16": 2.567e9 * 2 / 1e9}, "flux": {"fp8": 11.9, "bf16": 23.8}}
CONTEXT_GB, GUIDANCE_NETWORK_GB = 1.0, 0.3  # CUDA context; CLIP ViT-B/16 in fp16
GPUS_GB = (12, 16, 24)
DTYPE = torch.bfloat16  # the activations' type: ComfyUI runs SDXL in fp16 and Flux in bf16, both 2 bytes


class FusedAttention(torch.autograd.Function):
    """What fused attention saves for the backward: q, k, v, the output and a log-sum-exp per query row."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError


def fused_heads(q, k, v, heads, skip_reshape=False, **kwargs):
    """comfy.ldm.modules.attention's signature: (B, N, H·D) in and out, or (B, H, N, D) in with skip_reshape."""
    if skip_reshape:
        b, h, n, d = q.shape
        return FusedAttention.apply(q, k, v).transpose(1, 2).reshape(b, n, h * d)
    return FusedAttention.apply(q, k, v)


def saved_bytes(model, args, blocks=()) -> int:
    """Bytes autograd saves in `model(*args)`, each storage once. With checkpointed `blocks`, what a block saves
    inside itself is not kept; its inputs are, and its own saves come back one block at a time in the backward
    pass, so the most any one block saves is added."""
    storages, inputs, inside, peak, starts = {}, {}, [0], [0], {}

    def size(t):
        return t.numel() * t.element_size()

    def pack(t):
        storages.setdefault((t.untyped_storage()._cdata, t.dtype), size(t))
        return t

    def enter(module, a):
        starts[module] = sum(storages.values())
        for t in a:
            if torch.is_tensor(t) and t.requires_grad:
                inputs.setdefault(id(t), size(t))

    def leave(module, a, out):
        own = sum(storages.values()) - starts.pop(module)
        inside[0] += own
        peak[0] = max(peak[0], own)

    hooks = [h for b in blocks for h in (b.register_forward_pre_hook(enter), b.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(*args)
    finally:
        for h in hooks:
            h.remove()
    total = sum(storages.values())
    if not blocks:
        return total
    return total - inside[0] + sum(inputs.values()) + peak[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "bench-output", "guidance-memory"))
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
    from comfy_headless import ComfyHost

    comfy_host = ComfyHost(os.environ["COMFYUI_PATH"])
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.model as vae_model
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    attention.optimized_attention = fused_heads
    outermost_blocks = comfy_host.pack_module("samplers.checkpointing").outermost_blocks
    checkpointed = comfy_host.pack_module("nodes.host_models").CHECKPOINTED_BLOCKS

    def blocks_of(root):  # what the sampler's checkpointing wraps (nodes/host_models.py)
        return outermost_blocks(root, lambda m: type(m).__name__ in checkpointed)

    ops = comfy.ops.disable_weight_init
    results = {}
    import comfy.ldm.flux.math as flux_math
    from comfy.ldm.flux.model import Flux

    flux_math.optimized_attention = fused_heads
    families = comfy_host.pack_module("nodes.stand_in_families").FAMILIES
    small = {family: families[family]["config"] for family in ("sdxl", "flux")}
    taesd = __import__("comfy.taesd.taesd", fromlist=["taesd"])
    for family in ("sdxl", "flux"):
        latent_channels = 4 if family == "sdxl" else 16
        for size, config in (("real", SDXL if family == "sdxl" else FLUX), ("stand-in", small[family])):
            with torch.device("meta"):
                if family == "sdxl":
                    net = UNetModel(**config, device="meta", dtype=DTYPE, operations=ops)
                    blocks = blocks_of(net)
                else:
                    net = Flux(**config, device="meta", dtype=DTYPE, operations=ops)
                    blocks = blocks_of(net)
                vae_config = {**VAE, "z_channels": latent_channels}
                if size == "stand-in":
                    vae_config.update(ch=32, ch_mult=[1, 2, 2, 2], num_res_blocks=1)
                decoders = {"vae": vae_model.Decoder(**vae_config).to(DTYPE),
                            "taesd": taesd.Decoder(latent_channels).to(DTYPE)}
            for m in decoders["vae"].modules():
                if hasattr(m, "optimized_attention"):
                    m.optimized_attention = FusedAttention.apply
            unet_call = unet_caller(family, net, config)
            parts = {}
            for checkpointing in (False, True):
                tag = "checkpointing" if checkpointing else "plain"
                chosen = blocks if checkpointing else ()
                for branches in ((2, 1) if family == "sdxl" else (1,)):  # Flux dev runs at cfg 1: one branch
                    parts[f"unet/{branches}/{tag}"] = saved_bytes(unet_call, unet_call.inputs(branches),
                                                                 chosen)
                for name, scale in (("vae", 1), ("vae_half", 2), ("taesd", 1)):
                    decoder = decoders[name.split("_")[0]]
                    decoder_blocks = blocks_of(decoder)
                    z = torch.empty(1, latent_channels, LATENT // scale, LATENT // scale, dtype=DTYPE,
                                    device="meta", requires_grad=True)
                    parts[f"{name}/{tag}"] = saved_bytes(decoder, (z,),
                                                         decoder_blocks if checkpointing else ())
            results[f"{family}/{size}"] = {k: v / GIB for k, v in parts.items()}
            print(family, size, json.dumps({k: round(v / GIB, 2) for k, v in parts.items()}), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"parts_gib": results, "paths_gib": paths(results), "fits": fits(results)}, f, indent=1)
    print(table(results))


def unet_caller(family, net, config):
    """`call(*inputs(batch))`: the UNet or transformer on a 1024 px latent whose input needs a gradient."""
    def inputs(batch):
        with torch.device("meta"):
            channels = 4 if family == "sdxl" else 16
            x = torch.empty(batch, channels, LATENT, LATENT, dtype=DTYPE, requires_grad=True)
            if family == "sdxl":
                return (x, torch.ones(batch), torch.empty(batch, 77, config["context_dim"], dtype=DTYPE),
                        torch.empty(batch, config["adm_in_channels"], dtype=DTYPE))
            return (x, torch.ones(batch), torch.empty(batch, 256, config["context_in_dim"], dtype=DTYPE),
                    torch.empty(batch, config["vec_in_dim"], dtype=DTYPE))

    def call(x, t, context, y):
        if family == "sdxl":
            return net(x, timesteps=t, context=context, y=y)
        return net(x, t, context, y, guidance=torch.full((x.shape[0],), 3.5, device="meta"))

    call.inputs = inputs
    return call


# (what the docs call it, the UNet's branches with a gradient (0: none), checkpointing, the guidance decoder)
PATHS = [("through the UNet", 2, False, "vae"),
         ("through the UNet, checkpointing", 2, True, "vae"),
         ("through the UNet, checkpointing, TAESD", 2, True, "taesd"),
         ("through the UNet, checkpointing, half-resolution decode", 2, True, "vae_half"),
         ("unconditional branch, checkpointing, TAESD", 1, True, "taesd"),
         ("x0_only", 0, False, "vae"),
         ("x0_only, TAESD", 0, False, "taesd"),
         ("x0_only, checkpointing, TAESD", 0, True, "taesd")]


def paths(results) -> dict:
    """Each path's extra GiB per model and size: the UNet's saves (if its gradient is taken) and the decoder's."""
    out = {}
    for key, parts in results.items():
        family = key.split("/")[0]
        for name, branches, checkpointing, decoder in PATHS:
            branches = min(branches, 1) if family == "flux" and branches else branches
            if family == "flux" and name.startswith("unconditional"):
                continue  # Flux dev has no negative branch at cfg 1
            tag = "checkpointing" if checkpointing else "plain"
            unet = parts[f"unet/{branches}/{tag}"] if branches else 0.0
            out.setdefault(key, {})[name] = unet + parts[f"{decoder}/{tag}"]
    return out


def working_gb(family: str) -> float:
    """ComfyUI's estimate of an unguided pass's working memory: BaseModel.memory_required, at 1024 px, bf16."""
    factor = {"sdxl": 0.8, "flux": 3.1}[family]  # memory_usage_factor in ComfyUI 0.3.64
    area = (2 if family == "sdxl" else 1) * LATENT * LATENT
    return area * 2 * 0.01 * factor * 2**20 / 1e9


def fits(results) -> dict:
    """Each path's GB on a GPU with the weights, the unguided working memory, a guidance network and the context."""
    out = {}
    extra = paths(results)
    for family, weights in WEIGHTS_GB.items():
        for precision, gb in weights.items():
            base = gb + working_gb(family) + CONTEXT_GB
            rows = {"unguided": base, **{name: base + GUIDANCE_NETWORK_GB + gib * GIB / 1e9
                                         for name, gib in extra[f"{family}/real"].items()}}
            for name, need in rows.items():
                out[f"{family} {precision}: {name}"] = {"needs_gb": round(need, 1),
                                                         **{f"{g} GB": need <= g for g in GPUS_GB}}
    return out


def table(results) -> str:
    extra = paths(results)
    lines = ["| path | SDXL | SDXL stand-in | Flux | Flux stand-in |", "|---|---|---|---|---|"]
    for name, *_ in PATHS:
        cells = [extra[key].get(name) for key in ("sdxl/real", "sdxl/stand-in", "flux/real", "flux/stand-in")]
        lines.append(f"| {name} | " + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + " |")
    lines += ["", "| weights: path | needs GB | " + " | ".join(f"{g} GB" for g in GPUS_GB) + " |",
              "|---|---|" + "---|" * len(GPUS_GB)]
    for key, row in fits(results).items():
        lines.append(f"| {key} | {row['needs_gb']} | "
                     + " | ".join("fits" if row[f"{g} GB"] else "no" for g in GPUS_GB) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
