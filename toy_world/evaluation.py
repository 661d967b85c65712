"""Scores of generated toy images: against a guidance target by the held-out evaluators, per sample; realism
per sample (the ε UNet's denoising error) and over the whole distribution (KID against real scenes)."""
from __future__ import annotations

import warnings

import torch
from torchmetrics.image.kid import KernelInceptionDistance

from . import data, splits
from .networks import ClassifierNetwork, iou


def mean_iou(predicted: torch.Tensor, target: torch.Tensor, classes: int = 1 + len(data.SHAPES)) -> torch.Tensor:
    """Per sample, the IoU of each class present in the target or the prediction, averaged: (B, H, W) ×2 -> (B,)."""
    scores = []
    for p, t in zip(predicted, target):
        ious = [((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in range(classes) if ((p == c) | (t == c)).any()]
        scores.append(torch.stack(ious).float().mean())
    return torch.stack(scores)


def segmentation_score(evaluator, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mIoU of the evaluator's segmentation of images (B, 3, H, W) in [0, 1] against target maps (B, H, W)."""
    with torch.no_grad():
        return mean_iou(evaluator(images)["out"].argmax(1), target)


def classification_score(evaluator, images: torch.Tensor, target_class: int) -> torch.Tensor:
    """1 where the target class (a coloured shape) is the evaluator's most likely class for the image, else 0."""
    with torch.no_grad():
        return (evaluator(images).argmax(1) == target_class).float()


def location_score(evaluator, images: torch.Tensor, shape_boxes: dict[str, tuple[float, ...]]) -> torch.Tensor:
    """Mean over the target shapes of the IoU between the evaluator's box and the target box (fractions);
    0 for a shape the evaluator does not find."""
    with torch.no_grad():
        presence, boxes = evaluator(images)
    scores = []
    for shape, box in shape_boxes.items():
        index = data.SHAPES.index(shape)
        overlap = iou(boxes[:, index], torch.tensor([box], dtype=boxes.dtype).expand(len(images), 4))
        scores.append(torch.where(presence[:, index] > 0, overlap, torch.zeros_like(overlap)))
    return torch.stack(scores).mean(0)


def masked_psnr(images: torch.Tensor, reference: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """PSNR in dB over the known pixels (known: (B or 1, H, W), 1 = known) of images in [0, 1]."""
    weight = known[:, None].expand_as(images).float()
    mse = ((images - reference) ** 2 * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


REALISM_TIMESTEPS = (100, 300, 500, 700)


def denoising_error(eps_model, vae, images: torch.Tensor) -> torch.Tensor:
    """Per image (B, 3, H, W) in [0, 1], the toy ε UNet's mean ε-prediction error on its latent (encoded by `vae`,
    ComfyUI's VAE) at REALISM_TIMESTEPS, with seeded noise; lower is closer to the training data. `eps_model` is
    the ε model's ComfyUI BaseModel."""
    with torch.inference_mode():
        latents = eps_model.process_latent_in(vae.encode(images.movedim(1, -1)))
        alphas = 1 / (1 + eps_model.model_sampling.sigmas.float() ** 2)  # ᾱ_t of ComfyUI's discrete schedule
        generator = torch.Generator().manual_seed(0)
        errors = []
        for t in REALISM_TIMESTEPS:
            noise = torch.randn(latents.shape, generator=generator)
            noisy = alphas[t].sqrt() * latents + (1 - alphas[t]).sqrt() * noise
            predicted = eps_model.diffusion_model(noisy, torch.full((len(latents),), float(t)))
            errors.append(((predicted - noise) ** 2).mean(dim=(1, 2, 3)))
        return torch.stack(errors).mean(0)


class RealismFeatures(torch.nn.Module):
    """KID's feature space: the held-out classifier evaluator's encoder, pooled by mean and max as its head sees
    it. An evaluator, so that no guide grades the images it steered."""

    def __init__(self, classifier_evaluator: ClassifierNetwork):
        super().__init__()
        self.encoder = classifier_evaluator.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)
        return torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], 1)


def real_scenes(seeds=splits.REALISM_SEEDS) -> torch.Tensor:
    """The real scenes that KID compares with, (N, 3, SIZE, SIZE) in [0, 1]."""
    return data.batch(seeds)[0]


def kid(features: RealismFeatures, images: torch.Tensor, real: torch.Tensor, subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """KID (mean and standard deviation over random subsets) of images against real images, both (N, 3, H, W) in
    [0, 1]: 0 when they come from one distribution, larger the further apart. Subsets hold as many images as the
    smaller set; the subsets' draw is seeded and leaves torch's global generator as it was."""
    with warnings.catch_warnings():  # that it keeps every feature: a few hundred 128-d vectors here
        warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save all extracted features")
        metric = KernelInceptionDistance(feature=features, subsets=subsets, subset_size=min(len(images), len(real)))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        metric.update(real, real=True)
        metric.update(images, real=False)
        mean, std = metric.compute()
    return float(mean), float(std)


NOISE_CHECK_SIGMA = 0.2


def kid_checks(features: RealismFeatures, unguided: torch.Tensor) -> dict[str, tuple[float, float]]:
    """KID against the real scenes of images whose answer is known: other real scenes must score near 0, and
    unguided samples better than the same samples with strong noise added."""
    real = real_scenes()
    noise = torch.randn(unguided.shape, generator=torch.Generator().manual_seed(0))
    return {"other real scenes": kid(features, real_scenes(splits.REALISM_CHECK_SEEDS), real),
            "unguided samples": kid(features, unguided, real),
            f"unguided samples + noise σ = {NOISE_CHECK_SIGMA}": kid(features, (unguided + NOISE_CHECK_SIGMA * noise).clamp(0, 1), real)}
