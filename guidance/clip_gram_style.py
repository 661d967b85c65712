"""Style guidance by Gram matrices of CLIP image features (Semantic Diffusion Guidance's image style guidance).

ℓ = Σ over feature layers of the squared difference between the Gram matrices of the generated image's
features and the style image's, relative to the style Gram's own square, so that one weight suits any
CLIP model. Layers: the first two stages of a ResNet CLIP (layer1, layer2), or the first
two transformer blocks of a ViT CLIP (TFG's style score uses the second block's output, hidden_states[2]).
"""
from __future__ import annotations

import torch

from .clip_similarity import encode_image
from .images import check_batch

FEATURE_LAYERS = 2


def feature_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The image-tower modules whose outputs the style is read from."""
    visual = model.visual
    if hasattr(visual, "layer1"):  # open_clip ModifiedResNet
        return [visual.layer1, visual.layer2]
    if hasattr(visual, "transformer"):  # open_clip VisionTransformer
        return list(visual.transformer.resblocks[:FEATURE_LAYERS])
    raise ValueError(f"Gram style guidance needs a ResNet or ViT open_clip model, not {type(visual).__name__}.")


def gram(features: torch.Tensor, tokens_first: bool = False) -> torch.Tensor:
    """Gram matrix per sample: (B, C, H, W) maps give (B, C, C); (B, N, D) tokens give (B, D, D); normalised by size."""
    if features.ndim == 4:
        flat = features.flatten(2)  # (B, C, HW)
    else:
        tokens = features.transpose(0, 1) if tokens_first else features
        flat = tokens.transpose(1, 2)  # (B, D, N)
    return flat @ flat.transpose(1, 2) / flat.shape[1] / flat.shape[2]


def style_grams(model: torch.nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """The Gram matrix of each feature layer for (B, 3, H, W) in [0, 1], differentiable in the image."""
    outputs = []
    hooks = [layer.register_forward_hook(lambda module, args, output: outputs.append(output)) for layer in feature_layers(model)]
    try:
        encode_image(model, image)
    finally:
        for hook in hooks:
            hook.remove()
    tokens_first = not getattr(getattr(model.visual, "transformer", None), "batch_first", True)
    return [gram(o.float(), tokens_first) for o in outputs]


class CLIPGramStyleLoss:
    """ℓ = Σ_layers ‖Gram(x) − Gram(style)‖² / ‖Gram(style)‖² for each sample."""

    def __init__(self, model: torch.nn.Module, style_grams: list[torch.Tensor]):
        self.model, self.targets = model, style_grams

    def check(self, batch: int, height: int, width: int) -> None:
        check_batch(self.targets[0].shape[0], "style images", batch)

    def bind(self, device: torch.device):
        model = self.model
        targets = [t.to(next(model.parameters()).device, torch.float32).clone() for t in self.targets]
        norms = [(t**2).sum(dim=(1, 2)).clamp_min(1e-30) for t in targets]  # once per run, not per call

        def loss(image: torch.Tensor) -> torch.Tensor:
            grams = style_grams(model, image)
            return sum(((g - t) ** 2).sum(dim=(1, 2)) / n for g, t, n in zip(grams, targets, norms)).to(image.device)

        return loss
