"""Write adm/manifests/*.json: the official guided-diffusion checkpoints' state-dict keys and shapes.

    python tools/adm_manifest.py /path/to/guided-diffusion

reads guided-diffusion's own source (a checkout of github.com/openai/guided-diffusion; nothing of it is kept),
builds each network of adm/configs.MANIFESTS with its script_util flags on the meta device, so that none of the
550 M parameters takes memory, and writes every key with its shape. The pack's tests check its own networks
against these files.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from adm.configs import MANIFEST_DIR  # noqa: E402

# guided-diffusion's script_util flags for each manifest, as its README gives them
MODEL = dict(attention_resolutions="32,16,8", learn_sigma=True, num_channels=256, num_res_blocks=2, resblock_updown=True,
             use_scale_shift_norm=True, use_fp16=False)
CLASSIFIER = dict(classifier_width=128, classifier_depth=2, classifier_attention_resolutions="32,16,8",
                  classifier_use_scale_shift_norm=True, classifier_resblock_updown=True, classifier_pool="attention",
                  classifier_use_fp16=False)
FLAGS = {
    "256x256_diffusion_uncond": ("model", dict(MODEL, image_size=256, num_head_channels=64, class_cond=False)),
    "256x256_diffusion": ("model", dict(MODEL, image_size=256, num_head_channels=64, class_cond=True)),
    "128x128_diffusion": ("model", dict(MODEL, image_size=128, num_heads=4, class_cond=True)),
    "512x512_diffusion": ("model", dict(MODEL, image_size=512, num_head_channels=64, class_cond=True)),
    **{f"{size}x{size}_classifier": ("classifier", dict(CLASSIFIER, image_size=size)) for size in (128, 256, 512)},
}


def build(script_util, kind: str, flags: dict) -> torch.nn.Module:
    if kind == "model":
        options = script_util.model_and_diffusion_defaults()
        options.update(flags)
        parameters = inspect.signature(script_util.create_model).parameters
        return script_util.create_model(**{k: v for k, v in options.items() if k in parameters})
    options = script_util.classifier_defaults()
    options.update(flags)
    return script_util.create_classifier(**options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("guided_diffusion", help="a checkout of openai/guided-diffusion")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.guided_diffusion))
    from guided_diffusion import script_util

    os.makedirs(MANIFEST_DIR, exist_ok=True)
    for name, (kind, flags) in FLAGS.items():
        with torch.device("meta"):
            network = build(script_util, kind, flags)
        shapes = {key: list(value.shape) for key, value in network.state_dict().items()}
        path = os.path.join(MANIFEST_DIR, f"{name}.json")
        parameters = sum(torch.Size(shape).numel() for shape in shapes.values())
        header = {"source": "openai/guided-diffusion's script_util, with the flags in tools/adm_manifest.py",
                  "flags": flags, "parameters": parameters}
        with open(path, "w") as f:  # a key a line, so that a diff shows what changed
            f.write(json.dumps(header)[:-1] + ', "shapes": {\n')
            f.write(",\n".join(f"{json.dumps(key)}: {json.dumps(shape)}" for key, shape in shapes.items()))
            f.write("\n}}\n")
        print(f"{path}: {len(shapes)} keys, {parameters:,} parameters")


if __name__ == "__main__":
    main()
