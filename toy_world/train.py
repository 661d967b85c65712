"""Train the toy world from scratch on CPU, with fixed seeds, and write its weights to toy_world/weights/.

    bash tools/train-toy-world [vae|unet|flow|decoder|guides|evaluators|networks|all]

`vae` trains ComfyUI's AutoencoderKL, `unet` ComfyUI's UNetModel on that VAE's latents (so it needs the VAE),
`flow` its rectified-flow twin, `decoder` the cheap decoder distilled from that VAE's decoder, `guides` the
guidance networks, `evaluators` their held-out evaluators, and `networks` both. `all` ran in 29 minutes on two
CPU cores. Weights are saved in half precision.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
from toy_world import data, evaluation, networks  # noqa: E402
from toy_world.diffusion import (FLOW_SAMPLING, FLOW_UNET_FILE, SAMPLING, UNET_CONFIG, UNET_FILE,  # noqa: E402
                                 VAE_CONFIG, VAE_FILE, WEIGHTS_DIR, latent_metadata, read_weights)
from toy_world.cheap_decoder import CHEAP_DECODER_FILE, CheapDecoder  # noqa: E402
from toy_world.splits import EVALUATOR_SEEDS, TEST_SEEDS, TRAIN_SEEDS  # noqa: E402

VAE_KL_WEIGHT = 1e-7
# Training steps per role and kind. The evaluators train longer, so that each grades at least as well as the
# guide it checks (their held-out scores are in the README).
NETWORK_STEPS = {"guide": {"segmenter": 700, "classifier": 600, "box_predictor": 600},
                 "evaluator": {"segmenter": 2500, "classifier": 3000, "box_predictor": 3000}}
NETWORK_SEEDS = {"guide": (TRAIN_SEEDS[:4000], 0), "evaluator": (EVALUATOR_SEEDS, 1)}  # scenes, torch seed


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@functools.cache
def comfy_modules():
    """ComfyUI's autoencoder and UNet modules (ComfyUI needs its command line parsed before they import)."""
    from comfy_headless import ComfyHost

    ComfyHost(os.environ["COMFYUI_PATH"])
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel

    return comfy.ldm.models.autoencoder, comfy.ldm.modules.diffusionmodules.openaimodel


def initialised(module: torch.nn.Module) -> torch.nn.Module:
    """ComfyUI's layers skip initialisation (they expect a checkpoint): apply torch's own initialisation."""
    for layer in module.modules():
        for kind in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm):
            if isinstance(layer, kind):
                kind.reset_parameters(layer)
    return module


def warmup_cosine(step: int, steps: int, warmup: int, floor: float = 0.05) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def save_half(state_dict: dict, name: str, metadata: dict | None = None) -> None:
    os.makedirs(WEIGHTS_DIR, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state_dict.items() if v.is_floating_point()}
    save_file(tensors, os.path.join(WEIGHTS_DIR, name), metadata=metadata)
    log(f"wrote {name} ({os.path.getsize(os.path.join(WEIGHTS_DIR, name)) / 1e6:.1f} MB)")


def images_of(seeds) -> torch.Tensor:
    start = time.time()
    images, _ = data.batch(seeds)
    log(f"drew {len(images)} scenes in {time.time() - start:.0f} s")
    return images


def train_vae(images: torch.Tensor, steps: int = 2000, batch: int = 8, lr: float = 1e-3) -> None:
    autoencoder_module, _ = comfy_modules()
    torch.manual_seed(0)
    vae = initialised(autoencoder_module.AutoencoderKL(**copy.deepcopy(VAE_CONFIG)))
    optimiser = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, warmup=100))
    order = torch.Generator().manual_seed(1)
    held_out = images[-64:] * 2 - 1
    train = images[:-64] * 2 - 1
    for step in range(steps):
        x = train[torch.randint(len(train), (batch,), generator=order)]
        z, regulariser = vae.encode(x, return_reg_log=True)
        reconstruction = vae.decode(z)
        loss = F.mse_loss(reconstruction, x) + 0.5 * F.l1_loss(reconstruction, x) + VAE_KL_WEIGHT * regulariser["kl_loss"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            with torch.no_grad():
                mse = F.mse_loss(vae.decode(vae.encode(held_out)), held_out).item() / 4  # in [0, 1] units
            log(f"vae step {step}: loss {loss.item():.4f}, held-out PSNR {10 * math.log10(1 / mse):.1f} dB")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(train[i:i + 256]) for i in range(0, 2048, 256)])
        scale = 1 / latents.std().item()
        # Least-squares RGB of each scaled latent pixel, for ComfyUI's live previews.
        target = F.avg_pool2d(train[:2048], 4).permute(0, 2, 3, 1).reshape(-1, 3)
        rgb_factors = torch.linalg.lstsq(latents.permute(0, 2, 3, 1).reshape(-1, 4) * scale, target).solution
    log(f"latent std {1 / scale:.3f}, scale factor {scale:.4f}")
    save_half(vae.state_dict(), VAE_FILE, {"latent_scale_factor": f"{scale:.6f}",
                                          "latent_rgb_factors": json.dumps(rgb_factors.tolist())})


def ddpm_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(SAMPLING["linear_start"] ** 0.5, SAMPLING["linear_end"] ** 0.5, SAMPLING["timesteps"], dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def trained_vae(autoencoder_module):
    vae = autoencoder_module.AutoencoderKL(**copy.deepcopy(VAE_CONFIG))
    vae.load_state_dict(read_weights(VAE_FILE))
    return vae.eval().requires_grad_(False), latent_metadata()[0]


def eps_objective(latents: torch.Tensor, alphas_cumprod: torch.Tensor):
    """SD's: x_t = √ᾱ·x0 + √(1−ᾱ)·ε at an integer timestep t, predicting ε."""
    t = torch.randint(SAMPLING["timesteps"], (len(latents),))
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = torch.randn_like(latents)
    return a.sqrt() * latents + (1 - a).sqrt() * noise, t.float(), noise


def flow_objective(latents: torch.Tensor, alphas_cumprod: torch.Tensor):
    """Rectified flow as ComfyUI's CONST sampling reads it: x = (1−σ)·x0 + σ·ε at timestep σ·multiplier,
    predicting the velocity ε − x0; σ logit-normal, as SD3 trains, then shifted as the sampler shifts it."""
    sigma = torch.sigmoid(torch.randn(len(latents)))
    shift = FLOW_SAMPLING["shift"]
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    s = sigma.view(-1, 1, 1, 1)
    noise = torch.randn_like(latents)
    return (1 - s) * latents + s * noise, sigma * FLOW_SAMPLING["multiplier"], noise - latents


OBJECTIVES = {"eps": (eps_objective, UNET_FILE), "flow": (flow_objective, FLOW_UNET_FILE)}


def train_unet(images: torch.Tensor, objective: str = "eps", steps: int = 4000, batch: int = 32, lr: float = 1e-3,
               ema_decay: float = 0.999) -> None:
    """The UNet on scaled VAE latents, drawn afresh from the posterior each step, for one of OBJECTIVES."""
    noised, file_name = OBJECTIVES[objective]
    autoencoder_module, unet_module = comfy_modules()
    vae, scale = trained_vae(autoencoder_module)
    with torch.no_grad():
        moments = torch.cat([vae.quant_conv(vae.encoder(images[i:i + 256] * 2 - 1)) for i in range(0, len(images), 256)])
    mean, log_variance = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * log_variance.clamp(-30, 20))
    log(f"encoded {len(images)} scenes; scaled latent std {(mean * scale).std().item():.3f}")
    torch.manual_seed(0)
    unet = initialised(unet_module.UNetModel(**copy.deepcopy(UNET_CONFIG)))
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, warmup=200))
    alphas_cumprod = ddpm_alphas_cumprod()
    running = None
    for step in range(steps):
        index = torch.randint(len(mean), (batch,))
        latents = (mean[index] + std[index] * torch.randn_like(std[index])) * scale
        noisy, timesteps, target = noised(latents, alphas_cumprod)
        loss = F.mse_loss(unet(noisy, timesteps), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), unet.parameters()):
                averaged.lerp_(current, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0 or step == steps - 1:
            log(f"{objective} unet step {step}: loss {running:.4f}")
    save_half(ema.state_dict(), file_name)


def train_cheap_decoder(images: torch.Tensor, steps: int = 1500, batch: int = 32, lr: float = 2e-3) -> None:
    """Distil the toy VAE's decoder into the cheap one, on latents of training scenes and noisier ones, as the
    sampler's predicted x0 is early on."""
    autoencoder_module, _ = comfy_modules()
    vae, _ = trained_vae(autoencoder_module)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 256] * 2 - 1) for i in range(0, len(images), 256)])
    torch.manual_seed(0)
    decoder = initialised(CheapDecoder())
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, warmup=100))
    generator = torch.Generator().manual_seed(2)
    spread = latents.std()
    for step in range(steps):
        z = latents[torch.randint(len(latents), (batch,), generator=generator)]
        z = z + torch.rand(batch, 1, 1, 1, generator=generator) * 0.3 * spread * torch.randn(z.shape, generator=generator)
        with torch.no_grad():
            target = vae.decode(z)
        decoded = decoder(z)
        loss = F.mse_loss(decoded, target) + 0.5 * F.l1_loss(decoded, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"cheap decoder step {step}: loss {loss.item():.4f}")
    held_out = data.batch(TEST_SEEDS)[0] * 2 - 1
    with torch.no_grad():
        z = vae.encode(held_out)
        full, cheap = vae.decode(z), decoder(z)
    psnr = lambda a, b: 10 * math.log10(4 / F.mse_loss(a, b).item())  # noqa: E731 ([-1, 1] images)
    log(f"cheap decoder on {len(held_out)} held-out scenes: PSNR {psnr(cheap, full):.1f} dB against the full decoder, "
        f"{psnr(cheap, held_out):.1f} dB against the scenes (the full decoder: {psnr(full, held_out):.1f} dB)")
    save_half(decoder.state_dict(), CHEAP_DECODER_FILE)


def scene_targets(seeds) -> dict:
    scenes = [data.scene(seed) for seed in seeds]
    labels = [networks.labels(s) for s in scenes]
    return {
        "images": torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255,
        "maps": torch.from_numpy(np.stack([s.segmentation for s in scenes])).long(),
        "classes": torch.stack([label["classes"] for label in labels]),
        "present": torch.stack([label["present"] for label in labels]),
        "boxes": torch.stack([label["boxes"] for label in labels]),
    }


def training_loss(kind: str, network, batch: dict) -> torch.Tensor:
    if kind == "segmenter":
        return F.cross_entropy(network(batch["images"])["out"], batch["maps"])
    if kind == "classifier":
        return F.binary_cross_entropy_with_logits(network(batch["images"]), batch["classes"])
    return networks.box_loss(*network(batch["images"]), batch["present"], batch["boxes"]).mean()


def held_out_score(kind: str, network, batch: dict) -> str:
    with torch.no_grad():
        if kind == "segmenter":
            return f"mIoU {evaluation.mean_iou(network(batch['images'])['out'].argmax(1), batch['maps']).mean():.3f}"
        if kind == "classifier":
            said, truth = network(batch["images"]) > 0, batch["classes"].bool()
            return (f"found {(said & truth).sum() / truth.sum():.3f} of the coloured shapes present, "
                    f"{(said & ~truth).sum() / len(truth):.2f} false ones per image")
        presence, boxes = network(batch["images"])
        present = batch["present"].bool()
        found = ((presence > 0) == present).float().mean()
        return f"presence accuracy {found:.3f}, box IoU {networks.iou(boxes[present], batch['boxes'][present]).mean():.3f}"


def blurred(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half the batch blurred a little: decoded predictions of the clean image are soft early in sampling."""
    sigma = float(torch.empty(1).uniform_(0.3, 1.5, generator=generator))
    soft = torchvision.transforms.functional.gaussian_blur(images, [5, 5], [sigma, sigma])
    chosen = (torch.rand(len(images), generator=generator) < 0.5).view(-1, 1, 1, 1)
    return torch.where(chosen, soft, images)


def train_networks(roles=networks.ROLES, batch: int = 32, lr: float = 2e-3) -> None:
    test = scene_targets(TEST_SEEDS)
    for role in roles:
        seeds, seed = NETWORK_SEEDS[role]
        scenes = scene_targets(seeds)
        log(f"drew {len(seeds)} scenes for the {role}s")
        for kind, steps in NETWORK_STEPS[role].items():
            torch.manual_seed(seed)
            network = networks.build(kind, role)
            optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, warmup=50))
            generator = torch.Generator().manual_seed(seed)
            for step in range(steps):
                index = torch.randint(len(seeds), (batch,), generator=generator)
                picked = {key: value[index] for key, value in scenes.items()}
                picked["images"] = blurred(picked["images"], generator)
                loss = training_loss(kind, network, picked)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
            network.eval()
            log(f"{kind} {role}: loss {loss.item():.4f}; held-out {held_out_score(kind, network, test)}")
            save_half(network.state_dict(), networks.file_name(kind, role))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", default="all",
                        choices=["vae", "unet", "flow", "decoder", "guides", "evaluators", "networks", "all"])
    part = parser.parse_args().part
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()
    if part in ("vae", "all"):
        train_vae(images_of(TRAIN_SEEDS[:4000]))
    if part in ("unet", "all"):
        train_unet(images_of(TRAIN_SEEDS[:8000]))
    if part in ("flow", "all"):
        train_unet(images_of(TRAIN_SEEDS[:8000]), objective="flow")
    if part in ("decoder", "all"):
        train_cheap_decoder(images_of(TRAIN_SEEDS[:4000]))
    if part in ("guides", "evaluators", "networks", "all"):
        train_networks({"guides": ("guide",), "evaluators": ("evaluator",)}.get(part, networks.ROLES))
    log(f"done in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
