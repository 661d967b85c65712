"""The toy world's two guidance decoders side by side: the toy VAE's decoder and the cheap one distilled from it.

    bash bench/toy-world-decoders [--reps 30]

For batches of 1 and 4 latents it times what a guided pass spends on decoding, decode plus backward to the
latent, through the Toy World Loader's `vae` and `cheap_vae` in one process, the two interleaved, and prints
the medians and their ratio. Then it gives the cheap decoder's PSNR against the full decoder, and both against
the scenes, on 256 held-out scenes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
sys.path.insert(0, PACK_DIR)
from comfy_headless import ComfyHost  # noqa: E402

from toy_world import data, evaluation, splits  # noqa: E402


def decode_and_backward_seconds(decoder, latents: torch.Tensor) -> float:
    start = time.perf_counter()
    leaf = latents.clone().requires_grad_()
    decoder.decode(leaf).square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30, help="timed runs of each decoder per batch size")
    args = parser.parse_args()
    host = ComfyHost(os.environ["COMFYUI_PATH"])
    _, vae, _, cheap_vae = host.nodes.NODE_CLASS_MAPPINGS["UGDToyWorldLoader"]().load()  # not in inference mode: timed with autograd
    decoders = {"toy VAE decoder": vae.first_stage_model, "cheap decoder": cheap_vae.first_stage_model}
    print(f"decode + backward, median of {args.reps} interleaved runs, {torch.get_num_threads()} threads:")
    for batch in (1, 4):
        latents = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(batch))
        seconds = {name: [] for name in decoders}
        for rep in range(args.reps + 3):  # the first 3 warm up
            for name, decoder in decoders.items():
                spent = decode_and_backward_seconds(decoder, latents)
                if rep >= 3:
                    seconds[name].append(spent)
        full, cheap = (statistics.median(seconds[name]) for name in decoders)
        print(f"- batch {batch}: toy VAE decoder {full * 1e3:.2f} ms, cheap decoder {cheap * 1e3:.2f} ms: "
              f"{full / cheap:.1f}× cheaper")
    scenes = data.batch(splits.TEST_SEEDS)[0]
    everywhere = torch.ones(1, data.SIZE, data.SIZE)
    with torch.inference_mode():
        latents = vae.encode(scenes.movedim(1, -1))
        full, cheap = (v.decode(latents).movedim(-1, 1) for v in (vae, cheap_vae))
    psnr = lambda a, b: float(evaluation.masked_psnr(a, b, everywhere).mean())  # noqa: E731
    print(f"PSNR on {len(scenes)} held-out scenes: cheap against full decoder {psnr(cheap, full):.1f} dB; "
          f"against the scenes: full {psnr(full, scenes):.1f} dB, cheap {psnr(cheap, scenes):.1f} dB")


if __name__ == "__main__":
    main()
