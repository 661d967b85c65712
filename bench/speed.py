"""Speed and memory of one universal-guidance step, of its parts and of the levers, side by side in one run.

    bash bench/speed [--sizes 256 512] [--batches 1 2] [--reps 1] [--memory-limit-gb 21] [--parts-only]

The models have Stable Diffusion 1.5's architecture and random weights (ComfyUI's own UNetModel and
AutoencoderKL, TAESD, open_clip RN50 and torchvision's LR-ASPP MobileNetV3): cost depends on the architecture
only. Every measurement runs inside ComfyUI's sampling (`comfy.sample.sample_custom`, classifier-free guidance
at cfg 7.5 with a positive and a negative prompt, so the UNet sees twice the batch) and through the pack's own
engine, at a mid-schedule step (t = 500), in inference mode as ComfyUI's executor runs nodes:

- unguided: one plain step (the denoiser, then the DDIM step);
- guided: one step of the engine with CLIP text guidance: UNet, VAE decoder and CLIP, forward and backward;
- its parts, each on its own: UNet forward + backward (with CFG), VAE decoder forward + backward, CLIP
  forward + backward; the segmentation network's forward + backward alongside; the engine's overhead is the
  guided step less the sum of its parts, the floor our loop can reach; the decoders' and guidance networks'
  forwards alone, and TAESD's forward + backward, which with the others give each part's cost per image,
  forward and backward, written at 512 px and batch 1 to samplers/part_costs.json (what `samplers/cost.py`
  prices a counted guided run with);
- the levers: the guidance decoder (the full VAE, TAESD, the full VAE at half and quarter resolution: decode,
  CLIP loss and backward to the latent, and the cosine of each one's gradient to the full VAE's), gradient
  checkpointing, the x0-only gradient (no UNet backward), both also with TAESD, the gradient through the
  unconditional branch only (half the UNet's backward under CFG), and on CUDA bf16 and fp16 autocast. Guidance every N-th step needs no measurement: it divides the guided steps by N.

Peak memory is the peak resident memory (on CUDA also the peak allocated GPU memory) above what the process
held just before the measurement, so weights are excluded. Each size and batch runs in its own process; one
that goes over --memory-limit-gb is stopped, its measurement is reported as over the limit, and the rest go on
in a fresh process. The parts are timed after one warm-up run; the composite steps reuse their warmed kernels.
A last section measures how the levers' gradients agree with the exact one on the toy world, whose weights are
trained (random weights say nothing about that). Results go to bench-output/speed/.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import types

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
sys.path.insert(0, PACK_DIR)

CFG, TIMESTEP, NEXT_TIMESTEP = 7.5, 500.0, 480.0
PART_COSTS_FILE = os.path.join(PACK_DIR, "samplers", "part_costs.json")  # read by samplers/cost.py
PART_COSTS_SIZE = 512
PROMPT = "a photograph of a dog"
GB = 2.0**30
# Measurements in the order they run; the parts (warmed up first) before the composite steps.
PARTS = ("unguided", "unet", "vae", "clip", "segmentation",
         "decoder_vae", "decoder_taesd", "decoder_vae_half", "decoder_vae_quarter")
# Forward passes alone, and TAESD's forward + backward, for the part costs that price a counted run.
FORWARDS = ("vae_forward", "taesd", "taesd_forward", "clip_forward", "segmentation_forward")
COMPOSITES = ("guided", "guided_checkpointing", "guided_x0_only", "guided_unconditional", "guided_taesd",
              "guided_taesd_x0_only")
AUTOCAST = ("guided_bf16", "guided_fp16")
LABELS = {
    "unguided": "unguided step", "guided": "guided step", "unet": "UNet fwd+bwd (CFG)", "vae": "VAE decoder fwd+bwd",
    "clip": "CLIP RN50 fwd+bwd", "segmentation": "LR-ASPP fwd+bwd",
    "vae_forward": "VAE decoder fwd", "taesd": "TAESD decoder fwd+bwd", "taesd_forward": "TAESD decoder fwd",
    "clip_forward": "CLIP RN50 fwd", "segmentation_forward": "LR-ASPP fwd",
    "decoder_vae": "decoder: full VAE", "decoder_taesd": "decoder: TAESD", "decoder_vae_half": "decoder: VAE at 1/2",
    "decoder_vae_quarter": "decoder: VAE at 1/4",
    "guided_checkpointing": "guided step, checkpointing", "guided_x0_only": "guided step, x0_only",
    "guided_unconditional": "guided step, unconditional branch",
    "guided_taesd": "guided step, TAESD", "guided_taesd_x0_only": "guided step, TAESD + x0_only",
    "guided_bf16": "guided step, bf16 autocast", "guided_fp16": "guided step, fp16 autocast",
}

# Stable Diffusion 1.5's UNet and VAE.
SD15_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
    "num_heads": 8, "context_dim": 768, "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False, "use_spatial_transformer": True,
    "legacy": False, "use_checkpoint": False,
}
SD15_VAE = {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}


# ---------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _free_memory(torch) -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the next peak starts from here
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Meter:
    """Times a measurement and records its peak memory above the memory held when it starts."""

    def __init__(self, torch, reps: int):
        self.torch, self.reps, self.cuda = torch, reps, torch.cuda.is_available()
        self.warm: set[str] = set()

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def run(self, name: str, fn, warm_up: bool):
        torch = self.torch
        print("START " + name, flush=True)
        if warm_up:
            fn()
            self._sync()
            self.warm.add(name)
        _free_memory(torch)
        base_rss = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the current resident size
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            base_gpu = torch.cuda.memory_allocated()
        times, out = [], None
        for _ in range(self.reps):
            out = None
            start = time.perf_counter()
            out = fn()
            self._sync()
            times.append(time.perf_counter() - start)
        result = {"name": name, "times_s": times, "seconds": statistics.median(times),
                  "peak_gb": (_status_kb("VmHWM") - base_rss) * 1024 / GB,
                  "finite": bool(torch.isfinite(out).all())}
        if self.cuda:
            result["peak_gpu_gb"] = (torch.cuda.max_memory_allocated() - base_gpu) / GB
        print("RESULT " + json.dumps(result), flush=True)
        return out


# ---------------------------------------------------------------------------------------------- models
def build(host, size: int, batch: int):
    """ComfyUI's MODEL, VAE and TAESD VAE, and the pack's CLIP and segmentation guidance, all random."""
    import torch

    import comfy.ldm.models.autoencoder
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.taesd.taesd

    randomize = host.pack_module("nodes.stand_ins").randomize
    clip_nodes = host.pack_module("nodes.clip_guidance")
    segmentation_nodes = host.pack_module("nodes.segmentation_guidance")
    build_clip_model = host.pack_module("guidance.clip_similarity").build_clip_model
    build_segmenter = host.pack_module("guidance.segmentation").build_segmenter
    managed = host.pack_module("nodes.network_weights").managed

    with torch.no_grad():
        base = comfy.supported_models.SD15(dict(SD15_UNET)).get_model({})
        randomize(base.diffusion_model, 0)
        device = comfy.model_management.get_torch_device()
        model = comfy.model_patcher.ModelPatcher(base, load_device=device,
                                                 offload_device=comfy.model_management.unet_offload_device())
        autoencoder = comfy.ldm.models.autoencoder.AutoencoderKL(**SD15_VAE)
        randomize(autoencoder, 1)
        vae = comfy.sd.VAE(sd=autoencoder.state_dict(), config={"params": SD15_VAE})
        taesd = comfy.taesd.taesd.TAESD()
        randomize(taesd.taesd_decoder, 2)  # and not its latent scale, which must stay 1
        randomize(taesd.taesd_encoder, 3)
        taesd_vae = comfy.sd.VAE(sd=taesd.state_dict())
        del autoencoder, taesd
    settings = dict(weight=10.0, schedule="paper", backward_steps=0, backward_lr=0.01, optimizer="adam",
                    start_percent=0.0, end_percent=1.0)
    clip_model = clip_nodes.ClipGuidanceModel.wrap(build_clip_model("RN50"), "RN50")
    segmenter = managed(build_segmenter("lraspp_mobilenet_v3_large"))
    mask = torch.zeros(1, size, size)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    with torch.inference_mode():
        (clip_guidance,) = clip_nodes.CLIPTextGuidance().guide(clip_model, PROMPT, **settings)
        (segmentation_guidance,) = segmentation_nodes.SegmentationGuidance().guide(
            segmenter, "dog", "background", mask=mask, **settings)
    generator = torch.Generator().manual_seed(0)
    context = [torch.randn(1, 77, 768, generator=generator) for _ in range(2)]
    return dict(model=model, vae=vae, taesd_vae=taesd_vae, clip=clip_guidance, segmentation=segmentation_guidance,
                positive=[[context[0], {}]], negative=[[context[1], {}]],
                latent=torch.zeros(batch, 4, size // 8, size // 8),
                noise=torch.randn(batch, 4, size // 8, size // 8, generator=generator))


def _pack(host) -> types.SimpleNamespace:
    """The pack's modules as ComfyUI imported them."""
    return types.SimpleNamespace(
        host_models=host.pack_module("nodes.host_models"),
        cfg_branches=host.pack_module("nodes.cfg_branches"),
        Guide=host.pack_module("samplers.guide").Guide,
        guided_x0=host.pack_module("samplers.methods.ugd").guided_x0,
        base_step=host.pack_module("samplers.base_step").base_step,
        checkpointing=host.pack_module("samplers.checkpointing"),
        decoding=host.pack_module("samplers.decoding"),
        GuidancePrecision=host.pack_module("samplers.precision").GuidancePrecision,
        noise_coefficients=host.pack_module("samplers.parameterization").noise_coefficients,
    )


def _sigmas(model, timestep: float, next_timestep: float):
    import torch

    sampling = model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else model.model.model_sampling
    return sampling.sigma(torch.tensor([timestep, next_timestep])).float()


def measure(host, built: dict, names: list[str], meter: Meter) -> None:
    """Runs the measurements `names` inside ComfyUI's sampling, as a sampler function."""
    import torch

    import comfy.sample
    import comfy.samplers

    pack = _pack(host)

    def bench_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        guidance = built["clip"] + built["segmentation"]
        base_model, extra_args, decode = pack.host_models.prepare_guided_sampling(model, x.shape, extra_args, guidance, built["vae"])
        _, _, decode_taesd = pack.host_models.prepare_guided_sampling(model, x.shape, extra_args, guidance, built["taesd_vae"])
        with torch.inference_mode(False):
            clip_loss = built["clip"][0].loss.bind(x.device)
            segmentation_loss = built["segmentation"][0].loss.bind(x.device)
        active = [(built["clip"][0], clip_loss)]
        noise_scaling = base_model.model_sampling.noise_scaling
        sigma = sigmas[0] * x.new_ones([x.shape[0]])
        a, b = pack.noise_coefficients(noise_scaling, sigmas[0])
        a_next, b_next = pack.noise_coefficients(noise_scaling, sigmas[1])
        generator = torch.Generator().manual_seed(1)
        image_size = (x.shape[0], 3, x.shape[2] * 8, x.shape[3] * 8)
        with torch.inference_mode(False):  # autograd saves these for backward
            latent_direction = torch.randn(x.shape, generator=generator).to(x)
            image_direction = torch.randn(image_size, generator=generator).to(x)
            image = torch.rand(image_size, generator=generator).to(x)
        x0_plain = model(x, sigma, **extra_args).clone()
        def denoise(x_in, sigma_in):
            return model(x_in, sigma_in, **extra_args)

        exact = pack.Guide(denoise, decode)
        autograd = exact.autograd  # one runner, so every measurement clones saved activations if the host needs it

        def step(x0):
            return pack.base_step(x, x0, a, b, a_next, b_next)

        def gradient_of(output_fn, leaf_value, direction=None):
            def compute():
                leaf = leaf_value.detach().clone().requires_grad_(True)
                out = output_fn(leaf)
                (grad,) = torch.autograd.grad(out if direction is None else (out * direction).sum(), leaf)
                return grad
            return lambda: autograd.run(compute)

        def guided_step(guide, blocks=()):
            def run():
                with pack.checkpointing.checkpointed(blocks):
                    return step(pack.guided_x0(guide, x, sigma, active, a, b))
            return run

        def denoiser(decoder, **options):
            return pack.Guide(denoise, decoder, autograd=autograd, **options)

        def clip_through(decoder):
            return gradient_of(lambda x0: clip_loss(decoder(x0)).sum(), x0_plain)

        device_type = x.device.type
        functions = {
            "unguided": lambda: step(model(x, sigma, **extra_args)),
            "unet": gradient_of(lambda x_in: model(x_in, sigma, **extra_args), x, latent_direction),
            "vae": gradient_of(decode, x0_plain, image_direction),
            "clip": gradient_of(lambda im: clip_loss(im).sum(), image),
            "segmentation": gradient_of(lambda im: segmentation_loss(im).sum(), image),
            "vae_forward": lambda: decode(x0_plain),
            "taesd": gradient_of(decode_taesd, x0_plain, image_direction),
            "taesd_forward": lambda: decode_taesd(x0_plain),
            "clip_forward": lambda: clip_loss(image),
            "segmentation_forward": lambda: segmentation_loss(image),
            "decoder_vae": clip_through(decode),
            "decoder_taesd": clip_through(decode_taesd),
            "decoder_vae_half": clip_through(pack.decoding.at_reduced_resolution(decode, "half")),
            "decoder_vae_quarter": clip_through(pack.decoding.at_reduced_resolution(decode, "quarter")),
            "guided": guided_step(exact),
            "guided_checkpointing": guided_step(exact, pack.host_models.checkpoint_blocks(base_model, built["vae"])),
            "guided_x0_only": guided_step(denoiser(decode, gradient="x0_only")),
            "guided_unconditional": guided_step(denoiser(
                decode, gradient="unconditional", unconditional=pack.cfg_branches.unconditional_branches(model, extra_args))),
            "guided_taesd": guided_step(denoiser(decode_taesd)),
            "guided_taesd_x0_only": guided_step(denoiser(decode_taesd, gradient="x0_only")),
            "guided_bf16": guided_step(denoiser(decode, precision=pack.GuidancePrecision("bf16", device_type))),
            "guided_fp16": guided_step(denoiser(decode, precision=pack.GuidancePrecision("fp16", device_type))),
        }
        outputs = {}
        for name in names:
            if name in COMPOSITES + AUTOCAST:
                for part in ("unet", "vae", "clip"):  # the composite steps run on these parts' warmed kernels
                    if part not in meter.warm:
                        functions[part]()
                        meter.warm.add(part)
            outputs[name] = meter.run(name, functions[name], warm_up=name in PARTS + FORWARDS)
            # After every measurement, so that what is known survives a process stopped over the memory limit.
            print("AGREEMENT " + json.dumps(agreement(torch, outputs)), flush=True)
            print("HOST " + json.dumps({"clone_saved": autograd.clone_saved}), flush=True)
        return x

    model = built["model"]
    with torch.inference_mode():
        comfy.sample.sample_custom(model, built["noise"], CFG, comfy.samplers.KSAMPLER(bench_sampler), _sigmas(model, TIMESTEP, NEXT_TIMESTEP),
                                   built["positive"], built["negative"], built["latent"], disable_pbar=True, seed=0)


def _cosine(torch, u, v) -> float:
    return float(torch.nn.functional.cosine_similarity(u.flatten().double(), v.flatten().double(), dim=0))


def agreement(torch, outputs: dict) -> dict:
    """Cosines of each lever's gradient (or guided update) to the exact one's, from the measured outputs."""
    result = {}
    if "decoder_vae" in outputs:
        for name in ("decoder_taesd", "decoder_vae_half", "decoder_vae_quarter"):
            if name in outputs:
                result[name] = _cosine(torch, outputs[name], outputs["decoder_vae"])
    if "guided" in outputs and "unguided" in outputs:
        exact = outputs["guided"] - outputs["unguided"]  # the DDIM step is linear in x0: this is the x0 update, scaled
        for name in ("guided_checkpointing", "guided_x0_only", "guided_unconditional", "guided_bf16", "guided_fp16"):
            if name in outputs:
                result[name] = _cosine(torch, outputs[name] - outputs["unguided"], exact)
        if "guided_checkpointing" in outputs:
            result["checkpointing_max_difference"] = float((outputs["guided_checkpointing"] - outputs["guided"]).abs().max()
                                                           / exact.abs().max())
    if "guided_taesd" in outputs and "guided_taesd_x0_only" in outputs and "unguided" in outputs:
        result["guided_taesd_x0_only"] = _cosine(torch, outputs["guided_taesd_x0_only"] - outputs["unguided"],
                                                 outputs["guided_taesd"] - outputs["unguided"])
    return result


# ---------------------------------------------------------------------------------------------- toy world
def toy_agreement(host) -> None:
    """On the toy world's trained UNet and VAE: prints each lever's guided x0 update against the exact one (cosine)."""
    import torch
    from PIL import Image

    import comfy.sample
    import comfy.samplers

    nodes = host.nodes.NODE_CLASS_MAPPINGS
    pack = _pack(host)
    with torch.inference_mode():
        model, vae, unconditional, _ = nodes["UGDToyWorldLoader"]().load()
        segmenter, _, _ = nodes["UGDToyWorldGuidanceNetworks"]().load()
        target = Image.open(os.path.join(PACK_DIR, "workflows", "inputs", "ugd_toy_segmentation_map.png")).convert("RGB")
        target_map = torch.tensor(list(target.getdata()), dtype=torch.float32).reshape(1, 64, 64, 3) / 255
        (guidance,) = nodes["UGDSegmentationGuidance"]().guide(
            segmenter, "circle", "background", target_map=target_map, weight=100.0, schedule="paper",
            backward_steps=0, backward_lr=0.01, optimizer="adam", start_percent=0.0, end_percent=1.0)
    result = {}

    def agreement_sampler(model_fn, x, sigmas, extra_args=None, callback=None, disable=None):
        base_model, extra_args, decode = pack.host_models.prepare_guided_sampling(model_fn, x.shape, extra_args, guidance, vae)
        with torch.inference_mode(False):
            active = [(guidance[0], guidance[0].loss.bind(x.device))]
        sigma = sigmas[0] * x.new_ones([x.shape[0]])
        a, b = pack.noise_coefficients(base_model.model_sampling.noise_scaling, sigmas[0])
        plain = model_fn(x, sigma, **extra_args)

        def update(decoder=decode, blocks=(), **options):
            guide = pack.Guide(lambda x_in, sigma_in: model_fn(x_in, sigma_in, **extra_args), decoder, **options)
            with pack.checkpointing.checkpointed(blocks):
                return pack.guided_x0(guide, x, sigma, active, a, b) - plain

        exact = update()
        variants = {
            "guided_checkpointing": update(blocks=pack.host_models.checkpoint_blocks(base_model, vae)),
            "guided_x0_only": update(gradient="x0_only"),
            "decoder_vae_half": update(pack.decoding.at_reduced_resolution(decode, "half")),
            "decoder_vae_quarter": update(pack.decoding.at_reduced_resolution(decode, "quarter")),
            "guided_bf16": update(precision=pack.GuidancePrecision("bf16", x.device.type)),
        }
        for name, value in variants.items():
            result[name] = _cosine(torch, value, exact)
        return x

    noise = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for timestep in (800.0, 500.0, 200.0):
            sigmas = _sigmas(model, timestep, timestep - 20)
            comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.KSAMPLER(agreement_sampler), sigmas,
                                       unconditional, unconditional, torch.zeros_like(noise), disable_pbar=True, seed=0)
            print("TOY " + json.dumps({"timestep": timestep, **result}), flush=True)


def child(args) -> None:
    import torch

    from comfy_headless import ComfyHost

    torch.set_flush_denormal(True)  # random weights can produce denormals that trained ones do not
    cli_args = ("--use-pytorch-cross-attention",) + (() if torch.cuda.is_available() else ("--cpu",))
    host = ComfyHost(os.environ["COMFYUI_PATH"], cli_args=cli_args)
    if args.toy:
        toy_agreement(host)
        return
    built = build(host, args.size, args.batch)
    measure(host, built, args.measure, Meter(torch, args.reps))


# ---------------------------------------------------------------------------------------------- parent
def run_child(command: list[str], memory_limit_gb: float, log):
    """Runs a child, stopping it over the memory limit; returns (its output lines, whether it was stopped)."""
    import psutil

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []

    def read():
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            log.write(line)
            log.flush()
            if line.startswith(("START", "RESULT", "TOY")):
                print("   ", line.rstrip()[:160], flush=True)

    reader = threading.Thread(target=read)
    reader.start()
    watched, stopped = psutil.Process(process.pid), False
    while process.poll() is None:
        try:
            rss = watched.memory_info().rss
        except psutil.Error:
            rss = 0
        if rss > memory_limit_gb * GB or psutil.virtual_memory().available < 0.5 * GB:
            process.kill()
            stopped = True
            break
        time.sleep(0.2)
    process.wait()
    reader.join()
    if process.returncode != 0 and not stopped:
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"The benchmark process failed (exit {process.returncode}):\n{tail}")
    return lines, stopped


def run_configuration(size: int, batch: int, args, log) -> tuple[dict, dict, dict]:
    """Every measurement at one size and batch; a fresh process after one goes over the memory limit."""
    steps = () if args.parts_only else COMPOSITES + (AUTOCAST if args.with_autocast else ())
    names = list(PARTS + FORWARDS + steps)
    results, agreement_values, host_info = {}, {}, {}
    while names:
        command = [sys.executable, os.path.abspath(__file__), "--child", "--size", str(size), "--batch", str(batch),
                   "--reps", str(args.reps), "--measure", *names]
        lines, stopped = run_child(command, args.memory_limit_gb, log)
        started = None
        for line in lines:
            kind, _, payload = line.partition(" ")
            if kind == "START":
                started = payload
            elif kind == "RESULT":
                record = json.loads(payload)
                results[record["name"]] = record
            elif kind == "AGREEMENT":
                agreement_values.update(json.loads(payload))
            elif kind == "HOST":
                host_info = json.loads(payload)
        if not stopped:
            break
        results[started] = {"name": started, "over_limit": True}
        names = names[names.index(started) + 1:]
    return results, agreement_values, host_info


def _seconds(results, name):
    record = results.get(name, {})
    return record.get("seconds")


def _cell(results, name) -> str:
    record = results.get(name)
    if record is None:
        return "n/a"
    if record.get("over_limit"):
        return "over the memory limit"
    text = f"{record['seconds']:.2f} s, {record['peak_gb']:.2f} GB"
    if "peak_gpu_gb" in record:
        text += f" ({record['peak_gpu_gb']:.2f} GB GPU)"
    return text if record["finite"] else text + ", NOT FINITE"


def _versus(results, name, reference, value) -> str:
    """value(name) / value(reference) for the lever table, or why there is none."""
    if results.get(reference, {}).get("over_limit"):
        return "exact over the limit"
    return _ratio(value(results, name), value(results, reference))


def _ratio(numerator, denominator, digits=2) -> str:
    if numerator is None or denominator is None or denominator <= 0:
        return "n/a"
    return f"{numerator / denominator:.{digits}f}"


def _peak(results, name):
    record = results.get(name, {})
    return record.get("peak_gpu_gb", record.get("peak_gb"))


def tables(all_results: dict, args) -> tuple[str, list[str]]:
    """The Markdown tables, and the target lines."""
    steps = ["| size | batch | unguided step | guided step | UNet fwd+bwd (CFG) | VAE decoder fwd+bwd | CLIP fwd+bwd "
             "| engine overhead | guided / sum of parts | guided / unguided | LR-ASPP fwd+bwd |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    levers = ["| size | batch | lever | seconds, peak memory | time vs exact | peak memory vs exact "
              "| cosine to the exact gradient |", "|---|---|---|---|---|---|---|"]
    targets = []
    for (size, batch), (results, cosines, _) in all_results.items():
        seconds = {name: _seconds(results, name) for name in LABELS}
        parts = [seconds[p] for p in ("unet", "vae", "clip")]
        floor = None if None in parts else sum(parts)
        overhead = "n/a" if floor is None or seconds["guided"] is None else f"{seconds['guided'] - floor:+.2f} s"
        steps.append(f"| {size} | {batch} | " + " | ".join(_cell(results, n) for n in ("unguided", "guided", "unet", "vae", "clip"))
                     + f" | {overhead} | {_ratio(seconds['guided'], floor)} | {_ratio(seconds['guided'], seconds['unguided'], 1)}"
                     f" | {_cell(results, 'segmentation')} |")
        clip = seconds["clip"] or 0.0
        decode_cost = {n: None if seconds[n] is None else max(seconds[n] - clip, 1e-3)
                       for n in ("decoder_vae", "decoder_taesd", "decoder_vae_half", "decoder_vae_quarter")}
        exact_peak = _peak(results, "guided")
        for name in ("decoder_vae", "decoder_taesd", "decoder_vae_half", "decoder_vae_quarter"):
            cosine = "1 (reference)" if name == "decoder_vae" else (
                f"{cosines[name]:.3f}" if name in cosines else "n/a")
            levers.append(f"| {size} | {batch} | {LABELS[name]} (decode + backward, CLIP loss) | {_cell(results, name)} "
                          f"| {_ratio(decode_cost[name], decode_cost['decoder_vae'])} | {_ratio(_peak(results, name), _peak(results, 'decoder_vae'))} | {cosine} |")
        for name in ("guided_checkpointing", "guided_x0_only", "guided_unconditional", "guided_taesd",
                     "guided_taesd_x0_only") + (AUTOCAST if args.with_autocast else ()):
            reference = "guided_taesd" if name == "guided_taesd_x0_only" else "guided"
            cosine = "n/a"
            if name in cosines:
                cosine = f"{cosines[name]:.4f}"
            elif results.get(reference, {}).get("over_limit"):
                cosine = "exact over the limit"
            if name == "guided_checkpointing" and "checkpointing_max_difference" in cosines:
                cosine += f" (largest difference {cosines['checkpointing_max_difference']:.1e} of the update)"
            if name == "guided_taesd_x0_only" and name in cosines:
                cosine += " (to TAESD through the UNet)"
            levers.append(f"| {size} | {batch} | {LABELS[name]} | {_cell(results, name)} | {_versus(results, name, reference, _seconds)} "
                          f"| {_versus(results, name, reference, _peak)} | {cosine} |")
        label = f"{size} px, batch {batch}"
        targets.append(f"{label}: guided step / sum of parts = {_ratio(seconds['guided'], floor)} (target ≤ 1.10)")
        if size >= 512:
            targets.append(f"{label}: full VAE / TAESD decode + backward = {_ratio(decode_cost['decoder_vae'], decode_cost['decoder_taesd'], 1)}"
                           " (target ≥ 5)")
        unguided_peak = _peak(results, "unguided") or 0.0
        checkpoint_peak = _peak(results, "guided_checkpointing")
        extra = None if exact_peak is None else exact_peak - unguided_peak
        checkpoint_extra = None if checkpoint_peak is None else checkpoint_peak - unguided_peak
        targets.append(f"{label}: checkpointing's extra peak memory / exact's = {_ratio(checkpoint_extra, extra)} (target ≤ 0.5), "
                       f"time = {_ratio(seconds['guided_checkpointing'], seconds['guided'])} (target ≤ 1.4)"
                       + ("; the exact step went over the memory limit" if results.get("guided", {}).get("over_limit") else ""))
        targets.append(f"{label}: exact / x0_only step time = {_ratio(seconds['guided'], seconds['guided_x0_only'], 1)} with the full VAE, "
                       f"{_ratio(seconds['guided_taesd'], seconds['guided_taesd_x0_only'], 1)} with TAESD (target ≥ 2)")
    return "\n".join(steps) + "\n\n" + "\n".join(levers), targets


def toy_table(lines: list[str]) -> str:
    rows = [json.loads(line.partition(" ")[2]) for line in lines if line.startswith("TOY ")]
    names = ["guided_checkpointing", "guided_x0_only", "decoder_vae_half", "decoder_vae_quarter", "guided_bf16"]
    table = ["| t | " + " | ".join(LABELS[n].replace("guided step, ", "").replace("decoder: ", "") for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for row in rows:
        table.append(f"| {row['timestep']:.0f} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    return "\n".join(table)


def write_part_costs(results: dict, device: str) -> None:
    """Seconds per image of each part, forward and backward, at 512 px and batch 1, for `samplers/cost.py`.

    The UNet's are per image of its CFG batch (it runs on cond and uncond); a backward is the forward + backward
    measurement less the forward one.
    """
    def seconds(name):
        record = results.get(name, {})
        if "seconds" not in record:
            raise RuntimeError(f"bench/speed: no measurement of {LABELS[name]} at {PART_COSTS_SIZE} px, so no part costs")
        return record["seconds"]

    parts = {"unet": ("unguided", "unet", 2), "vae": ("vae_forward", "vae", 1), "taesd": ("taesd_forward", "taesd", 1),
             "clip": ("clip_forward", "clip", 1), "segmentation": ("segmentation_forward", "segmentation", 1)}
    costs = {part: {"forward": seconds(forward) / images, "backward": max(0.0, seconds(both) - seconds(forward)) / images}
             for part, (forward, both, images) in parts.items()}
    with open(PART_COSTS_FILE, "w") as f:
        json.dump({"device": device, "size": PART_COSTS_SIZE, "date": time.strftime("%Y-%m-%d"),
                   "seconds_per_image": costs}, f, indent=1)
        f.write("\n")
    print(f"Part costs at {PART_COSTS_SIZE} px written to {PART_COSTS_FILE}.")


def parent(args) -> None:
    import torch

    os.makedirs(args.output, exist_ok=True)
    log_path = os.path.join(args.output, "log.txt")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    started = time.time()
    all_results = {}
    with open(log_path, "w") as log:
        for size in args.sizes:
            for batch in args.batches:
                print(f"== {size} px, batch {batch}", flush=True)
                all_results[(size, batch)] = run_configuration(size, batch, args, log)
        toy_lines = [] if args.skip_toy else run_child([sys.executable, os.path.abspath(__file__), "--child", "--toy"],
                                                       args.memory_limit_gb, log)[0]
    clone_saved = any(info.get("clone_saved") for _, _, info in all_results.values())
    steps_and_levers, targets = tables(all_results, args)
    report = [f"Device: {device}. ComfyUI: {os.environ['COMFYUI_PATH']}. torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads. Timed runs per measurement: {args.reps}. Memory limit "
              f"{args.memory_limit_gb} GB. Total {time.time() - started:.0f} s.",
              "The host's UNet adds residuals in place, so saved activations were cloned (more memory)." if clone_saved else "",
              "", steps_and_levers, "", "Targets:", *[f"- {line}" for line in targets]]
    if toy_lines:
        report += ["", "Cosine of each lever's guided x0 update to the exact one on the toy world (trained weights, "
                   "segmentation guidance, 8 samples):", "", toy_table(toy_lines)]
    text = "\n".join(report)
    print("\n" + text)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({f"{size}x{batch}": value for (size, batch), value in all_results.items()}, f, indent=1)
    if (PART_COSTS_SIZE, 1) in all_results:
        write_part_costs(all_results[(PART_COSTS_SIZE, 1)][0], f"{device}, torch {torch.__version__}")
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=1, help="timed runs per measurement (the median is reported)")
    parser.add_argument("--memory-limit-gb", type=float, default=21.0)
    parser.add_argument("--with-autocast", action="store_true",
                        help="also measure bf16 and fp16 autocast (on by default on CUDA)")
    parser.add_argument("--skip-toy", action="store_true", help="leave out the toy world agreement section")
    parser.add_argument("--parts-only", action="store_true",
                        help="measure the parts only (what part_costs.json needs), not the composite steps")
    parser.add_argument("--output", default=os.path.join(PACK_DIR, "bench-output", "speed"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--toy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import torch

    args.with_autocast = args.with_autocast or torch.cuda.is_available()
    parent(args)


if __name__ == "__main__":
    main()
