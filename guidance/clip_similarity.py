"""CLIP similarity guidance: negative cosine between the CLIP image embedding and a text's (paper §4.1) or an image's (§4.2 style).

The reference scores with CLIP's logits, 100·cos (ugd-reference.md §2.4-2.5), and the paper's weights are
tuned to that scale, so the losses here carry the same factor.
"""
from __future__ import annotations

import kornia
import open_clip
import torch
import torch.nn.functional as F

from .images import check_batch, normalize
from .weights import load_strictly

LOGIT_SCALE = 100.0  # OpenAI CLIP's trained exp(logit_scale), which the reference's losses include


def build_clip_model(architecture: str, state_dict: dict | None = None) -> torch.nn.Module:
    """An open_clip model of `architecture`, with `state_dict` loaded if given, in eval mode."""
    if architecture not in open_clip.list_models():
        raise ValueError(f"Unknown open_clip architecture {architecture!r}; known ones include {open_clip.list_models()[:8]}.")
    model = open_clip.create_model(architecture, pretrained=None)
    if state_dict is not None:
        state_dict = state_dict.get("state_dict", state_dict)
        load_strictly(model, state_dict, f"open_clip {architecture!r}", "Pick the architecture the file was saved from.")
    return model.eval().requires_grad_(False)


def small_random_clip(seed: int = 0, width: int = 64, image_size: int = 64) -> torch.nn.Module:
    """A small open_clip CLIP (2-layer ViT and text towers) with random weights, for stand-ins and tests."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=width,
        vision_cfg=open_clip.CLIPVisionCfg(layers=2, width=width, head_width=32, patch_size=image_size // 4, image_size=image_size),
        text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=width, heads=2, layers=2),
    )
    model.visual.preprocess_cfg = {"size": image_size, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}
    return model.eval().requires_grad_(False)


def encode_text(model: torch.nn.Module, architecture: str, text: str) -> torch.Tensor:
    """(1, D) CLIP text embedding of `text`, computed without gradients."""
    tokens = open_clip.get_tokenizer(architecture)([text])
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.encode_text(tokens.to(device)).float()


def clip_preprocess(image: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Differentiable CLIP preprocessing of (B, 3, H, W) in [0, 1]: centre square crop, bicubic resize, normalise.

    Unlike the reference, which normalises with ImageNet statistics (ugd-reference.md §0.8), this uses
    the model's own mean and std, and it does not round to 8 bits (which would zero the gradient).
    """
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[..., top : top + side, left : left + side]
    resized = kornia.geometry.transform.resize(square, (size, size), interpolation="bicubic", antialias=True)
    return normalize(resized, mean, std)


def negative_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """−cos(a, b) along the last dimension, broadcasting the batch."""
    return -(F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1)


def preprocessing_of(model: torch.nn.Module) -> tuple[int, tuple, tuple]:
    """(input size, mean, std) of an open_clip model's image tower."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"]
    return (size if isinstance(size, int) else size[0]), tuple(cfg["mean"]), tuple(cfg["std"])


def encode_image(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(B, D) CLIP image embedding of (B, 3, H, W) in [0, 1], differentiable in the image."""
    parameter = next(model.parameters())
    size, mean, std = preprocessing_of(model)
    pixels = clip_preprocess(image.to(parameter.device, torch.float32), size, mean, std)
    return model.encode_image(pixels.to(parameter.dtype)).float()


class CLIPSimilarityLoss:
    """ℓ = −100·cos(CLIP_image(x), target) for each sample.

    The target is a text embedding for text guidance (paper §4.1), or the image embedding of a reference
    for the paper's style guidance (§4.2), which is also SDG's content guidance.
    """

    def __init__(self, model: torch.nn.Module, target: torch.Tensor, target_name: str = "text embeddings"):
        self.model, self.target, self.target_name = model, target, target_name

    def check(self, batch: int, height: int, width: int) -> None:
        check_batch(self.target.shape[0], self.target_name, batch)

    def bind(self, device: torch.device):
        model = self.model
        target = self.target.to(device=next(model.parameters()).device, dtype=torch.float32).clone()

        def loss(image: torch.Tensor) -> torch.Tensor:
            return LOGIT_SCALE * negative_cosine(encode_image(model, image), target).to(image.device)

        return loss
