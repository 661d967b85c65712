"""The toy world's cheap decoder, in TAESD's role: toy VAE latents to images at a small fraction of the cost.

ComfyUI's TAESD class upsamples 8× and the toy VAE downsamples 4×, so it does not fit; this is a small module of
the pack's own, distilled from the toy VAE's decoder (`bash tools/train-toy-world decoder`). The Toy World
Loader serves it behind ComfyUI's VAE object, with the toy VAE's own encoder, so VAEEncode, VAEDecode and the
sampler's `guidance_vae` all take it.

All of its work is at the latents' 16×16, and one sub-pixel step (PixelShuffle) reaches 64×64: at batch 1 a
guided pass through it is mostly fixed cost per layer, so it has as few layers as the fit allows.
"""
from __future__ import annotations

import torch

from .diffusion import LATENT_CHANNELS, LATENT_DOWNSCALE, read_weights

CHEAP_DECODER_FILE = "toy_cheap_decoder.safetensors"


class CheapDecoder(torch.nn.Sequential):
    """(B, 4, 16, 16) unscaled latents to (B, 3, 64, 64) images in [-1, 1], unclamped, as AutoencoderKL.decode."""

    def __init__(self, width: int = 48):
        conv = lambda cin, cout: torch.nn.Conv2d(cin, cout, 3, padding=1)  # noqa: E731
        super().__init__(conv(LATENT_CHANNELS, width), torch.nn.SiLU(), conv(width, width), torch.nn.SiLU(),
                         conv(width, 3 * LATENT_DOWNSCALE ** 2), torch.nn.PixelShuffle(LATENT_DOWNSCALE))


class CheapAutoencoder(torch.nn.Module):
    """What ComfyUI's VAE object calls as its first stage model: the toy VAE's encoder, and the cheap decoder."""

    def __init__(self, autoencoder: torch.nn.Module, decoder: CheapDecoder):
        super().__init__()
        self.autoencoder, self.decoder = autoencoder, decoder

    def encode(self, x: torch.Tensor, **options) -> torch.Tensor:
        return self.autoencoder.encode(x, **options)

    def decode(self, z: torch.Tensor, **_) -> torch.Tensor:  # current ComfyUI passes its vae_options
        return self.decoder(z)


def load_cheap_decoder() -> CheapDecoder:
    decoder = CheapDecoder()
    decoder.load_state_dict(read_weights(CHEAP_DECODER_FILE))
    return decoder.eval()
