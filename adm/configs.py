"""The released guided-diffusion checkpoints the pack loads: their architectures, noise schedule and manifests.

Plain data. Each manifest (adm/manifests/<name>.json) lists the official checkpoint's state-dict keys with their
shapes, as guided-diffusion's own code builds them (tools/adm_manifest.py wrote them from its source, on the meta
device); the tests check that the pack's networks have exactly those.
"""
from __future__ import annotations

import json
import os

MANIFEST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifests")
RELEASES = "https://github.com/openai/guided-diffusion (README: download the checkpoints)"
DOWNLOAD_BASE = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"

# guided-diffusion's "linear" schedule: β from 1e-4 to 0.02 in 1000 steps, linearly (ComfyUI's "sqrt_linear").
SAMPLING = {"beta_schedule": "sqrt_linear", "linear_start": 0.0001, "linear_end": 0.02, "timesteps": 1000}

# The paper's model (and the LSUN bedroom, cat and horse models, which share its flags):
# --attention_resolutions 32,16,8 --image_size 256 --learn_sigma True --num_channels 256 --num_head_channels 64
# --num_res_blocks 2 --resblock_updown True --use_scale_shift_norm True --class_cond False
UNCONDITIONAL_256 = dict(image_channels=3, model_channels=256, num_res_blocks=2, attention_resolutions=(8, 16, 32),
                         channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64, learn_sigma=True, num_classes=None)
# The noise-aware classifier's flags: --classifier_width 128 --classifier_depth 2 --classifier_attention_resolutions
# 32,16,8 --classifier_use_scale_shift_norm True --classifier_resblock_updown True --classifier_pool attention
CLASSIFIER_256 = dict(image_size=256, image_channels=3, model_channels=128, num_res_blocks=2,
                      attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
                      num_classes=1000)

# checkpoint file -> (what it is, the architecture, its image size)
DIFFUSION_MODELS = {
    "256x256_diffusion_uncond.pt": ("ImageNet 256×256, unconditional (the paper's)", UNCONDITIONAL_256, 256),
    "lsun_bedroom.pt": ("LSUN bedroom 256×256, unconditional", UNCONDITIONAL_256, 256),
    "lsun_cat.pt": ("LSUN cat 256×256, unconditional", UNCONDITIONAL_256, 256),
    "lsun_horse.pt": ("LSUN horse 256×256, unconditional", UNCONDITIONAL_256, 256),
}
CLASSIFIERS = {"256x256_classifier.pt": ("ImageNet 256×256 noise-aware classifier", CLASSIFIER_256)}
MANIFESTS = {"256x256_diffusion_uncond": UNCONDITIONAL_256, "256x256_classifier": CLASSIFIER_256}


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
