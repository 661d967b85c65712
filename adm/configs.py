"""The released guided-diffusion checkpoints the pack loads: their architectures, noise schedule and manifests.

Plain data. Each manifest (adm/manifests/<name>.json) lists the official checkpoint's state-dict keys with their
shapes, as guided-diffusion's own code builds them (tools/adm_manifest.py wrote them from its source, on the meta
device); the tests check that the pack's networks have exactly those.
"""
from __future__ import annotations

import functools
import json
import os

MANIFEST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifests")
RELEASES = "https://github.com/openai/guided-diffusion (README: download the checkpoints)"
DOWNLOAD_BASE = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"

# guided-diffusion's "linear" schedule: β from 1e-4 to 0.02 in 1000 steps, linearly (ComfyUI's "sqrt_linear").
SAMPLING = {"beta_schedule": "sqrt_linear", "linear_start": 0.0001, "linear_end": 0.02, "timesteps": 1000}

# Every released model on the linear schedule (guided-diffusion's README flags); the 64×64 ones, on the cosine
# schedule with another attention layout, are not offered. Attention resolutions are downsampling factors.
UNCONDITIONAL_256 = dict(image_channels=3, model_channels=256, num_res_blocks=2, attention_resolutions=(8, 16, 32),
                         channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64, learn_sigma=True, num_classes=None)
CONDITIONAL_256 = {**UNCONDITIONAL_256, "num_classes": 1000}
CONDITIONAL_128 = dict(image_channels=3, model_channels=256, num_res_blocks=2, attention_resolutions=(4, 8, 16),
                       channel_mult=(1, 1, 2, 3, 4), num_heads=4, num_head_channels=-1, learn_sigma=True,
                       num_classes=1000)
CONDITIONAL_512 = {**CONDITIONAL_256, "attention_resolutions": (16, 32, 64), "channel_mult": (0.5, 1, 1, 2, 2, 4, 4)}
# The noise-aware classifiers: --classifier_width 128 --classifier_depth 2 --classifier_attention_resolutions
# 32,16,8 --classifier_use_scale_shift_norm True --classifier_resblock_updown True --classifier_pool attention
CLASSIFIER_256 = dict(image_size=256, image_channels=3, model_channels=128, num_res_blocks=2,
                      attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
                      num_classes=1000)
CLASSIFIER_128 = {**CLASSIFIER_256, "image_size": 128, "attention_resolutions": (4, 8, 16),
                  "channel_mult": (1, 1, 2, 3, 4)}
CLASSIFIER_512 = {**CLASSIFIER_256, "image_size": 512, "attention_resolutions": (16, 32, 64),
                  "channel_mult": (0.5, 1, 1, 2, 2, 4, 4)}

# manifest name -> (the architecture, its image size)
MANIFESTS = {
    "256x256_diffusion_uncond": (UNCONDITIONAL_256, 256), "256x256_diffusion": (CONDITIONAL_256, 256),
    "128x128_diffusion": (CONDITIONAL_128, 128), "512x512_diffusion": (CONDITIONAL_512, 512),
    "128x128_classifier": (CLASSIFIER_128, 128), "256x256_classifier": (CLASSIFIER_256, 256),
    "512x512_classifier": (CLASSIFIER_512, 512),
}
# released file -> (what it is, its manifest)
DIFFUSION_MODELS = {
    "256x256_diffusion_uncond.pt": ("ImageNet 256×256, unconditional (the paper's)", "256x256_diffusion_uncond"),
    "lsun_bedroom.pt": ("LSUN bedroom 256×256, unconditional", "256x256_diffusion_uncond"),
    "lsun_cat.pt": ("LSUN cat 256×256, unconditional", "256x256_diffusion_uncond"),
    "lsun_horse.pt": ("LSUN horse 256×256, unconditional", "256x256_diffusion_uncond"),
    "lsun_horse_nodropout.pt": ("LSUN horse 256×256, unconditional", "256x256_diffusion_uncond"),
    "128x128_diffusion.pt": ("ImageNet 128×128, class-conditional", "128x128_diffusion"),
    "256x256_diffusion.pt": ("ImageNet 256×256, class-conditional", "256x256_diffusion"),
    "512x512_diffusion.pt": ("ImageNet 512×512, class-conditional", "512x512_diffusion"),
}
CLASSIFIERS = {
    "128x128_classifier.pt": ("ImageNet 128×128 noise-aware classifier", "128x128_classifier"),
    "256x256_classifier.pt": ("ImageNet 256×256 noise-aware classifier", "256x256_classifier"),
    "512x512_classifier.pt": ("ImageNet 512×512 noise-aware classifier", "512x512_classifier"),
}


@functools.cache
def manifest(name: str) -> dict[str, list[int]]:
    """{state-dict key: shape} of the official checkpoint `name` (a MANIFESTS key)."""
    with open(os.path.join(MANIFEST_DIR, f"{name}.json")) as f:
        return json.load(f)["shapes"]


def layout_problem(state_dict: dict, name: str) -> str | None:
    """How `state_dict` differs from the official checkpoint `name`'s keys and shapes (its first difference), or
    None when it has exactly them: checked before building the network, so a wrong file costs no memory."""
    expected = manifest(name)
    missing = [key for key in expected if key not in state_dict]
    if missing:
        return f"{len(missing)} of its {len(expected)} keys are missing, e.g. {missing[0]}"
    unexpected = [key for key in state_dict if key not in expected]
    if unexpected:
        return f"it has {len(unexpected)} keys the checkpoint has not, e.g. {unexpected[0]}"
    for key, shape in expected.items():
        if list(state_dict[key].shape) != shape:
            return f"{key} has shape {list(state_dict[key].shape)} instead of {shape}"
    return None


def identify(state_dict: dict, releases: dict) -> tuple[str | None, str]:
    """(the manifest among `releases`' whose keys and shapes `state_dict` has exactly, or None; and, for None, how
    it differs from the closest of them, the one it shares most keys with)."""
    names = sorted({name for _, name in releases.values()})
    for name in names:
        if layout_problem(state_dict, name) is None:
            return name, ""
    closest = max(names, key=lambda name: len(state_dict.keys() & manifest(name).keys()))
    return None, f"against {closest}: {layout_problem(state_dict, closest)}"
