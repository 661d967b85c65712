"""Classifier guidance with guided-diffusion's noise-aware ImageNet classifier, on the noisy image x_t.

The classifier (adm/networks.ADMClassifier) reads the sampler's latent itself, so it serves pixel-space models:
the ADM Model Loader's. Its gradient needs neither the UNet's backward pass nor a decoder.
"""
from __future__ import annotations

import folder_paths

from ..adm.configs import CLASSIFIERS, DOWNLOAD_BASE, RELEASES
from ..adm.networks import ADMClassifier
from ..guidance.classifier import IMAGENET_CATEGORIES, class_index
from ..guidance.noise_aware_classifier import NoiseAwareClassifier, NoiseAwareClassifierLoss, linear_alphas_cumprod
from .adm_model import read_official_checkpoint
from .guidance_settings import GUIDANCE, guidance_output, settings_inputs
from .model_folder import MODEL_FOLDER, model_folder_hint
from .network_weights import LoaderNode, managed

NOISE_AWARE_CLASSIFIER = "UGD_NOISE_AWARE_CLASSIFIER"
CLASSIFIER_FILE = "256x256_classifier.pt"


def noise_aware_classifier(architecture: dict, state_dict: dict | None = None) -> NoiseAwareClassifier:
    """guided-diffusion's classifier of `architecture` (ADMClassifier's arguments) on its linear schedule, frozen."""
    network = ADMClassifier(**architecture)
    if state_dict is not None:
        network.load_state_dict(state_dict, strict=True)
    size = architecture["image_size"]
    classifier = NoiseAwareClassifier(network, (architecture["image_channels"], size, size), linear_alphas_cumprod(),
                                      IMAGENET_CATEGORIES[:architecture["num_classes"]])
    return classifier.eval().requires_grad_(False)


def missing_classifier(name: str) -> str:
    usual = name if name in CLASSIFIERS else CLASSIFIER_FILE
    return (f"Noise-aware classifier '{name}' not found: put {usual} in {model_folder_hint()}. Get it "
            f"from {DOWNLOAD_BASE}{usual} ({RELEASES}).")


class NoiseAwareClassifierLoader(LoaderNode):
    DESCRIPTION = ("Loads guided-diffusion's noise-aware ImageNet classifier (256x256_classifier.pt in models/ugd, "
                   "or the 128 and 512 px ones), which classifies noisy images of its size at any step. For "
                   "Noise-Aware Classifier Guidance with the ADM Model Loader's model. Nothing downloads.")
    CATEGORY = "universal_guidance/loaders"
    RETURN_TYPES = (NOISE_AWARE_CLASSIFIER,)
    RETURN_NAMES = ("classifier",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = folder_paths.get_filename_list(MODEL_FOLDER)
        default = CLASSIFIER_FILE if CLASSIFIER_FILE in files or not files else files[0]
        return {"required": {"weights": (files or [CLASSIFIER_FILE], {
            "default": default, "tooltip": f"The classifier's file in models/ugd, {CLASSIFIER_FILE}."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, weights):
        if weights not in folder_paths.get_filename_list(MODEL_FOLDER):
            return missing_classifier(weights)
        return True

    def load(self, weights):
        state_dict, architecture = read_official_checkpoint(MODEL_FOLDER, weights, CLASSIFIERS,
                                                            "one of guided-diffusion's noise-aware classifiers",
                                                            missing_classifier)
        return (managed(noise_aware_classifier(architecture, state_dict)),)


class NoiseAwareClassifierGuidance:
    DESCRIPTION = ("Classifier guidance (Dhariwal and Nichol 2021) with a noise-aware classifier, as in the paper's "
                   "segmentation-guided inpainting (§5.1): ε̂' = ε̂ − w·√(1−ᾱ_t)·∇ log p(class | x_t, t), the "
                   "gradient taken on the noisy image itself (no UNet backward, no decoding). w is the classifier "
                   "scale (the reference's 1). Needs a pixel-space model whose images are the classifier's size.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        settings = settings_inputs(weight=1.0, schedule="paper")  # guided-diffusion's classifier scale
        return {"required": {
            "classifier": (NOISE_AWARE_CLASSIFIER, {"tooltip": "From Noise-Aware Classifier Loader."}),
            "target_class": ("STRING", {"default": "golden retriever",
                                        "tooltip": "An ImageNet class name ('golden retriever') or index (207)."}),
            **{name: settings[name] for name in ("weight", "schedule", "start_percent", "end_percent")},
        }}

    def guide(self, classifier, target_class, **settings):
        model = classifier.model
        index = class_index(target_class, model.categories)
        loss = NoiseAwareClassifierLoss(model, index)
        return guidance_output(f"noise-aware classifier guidance ({model.categories[index]})", loss, [classifier],
                               **settings)


NODE_CLASS_MAPPINGS = {
    "UGDNoiseAwareClassifierLoader": NoiseAwareClassifierLoader,
    "UGDNoiseAwareClassifierGuidance": NoiseAwareClassifierGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDNoiseAwareClassifierLoader": "Noise-Aware Classifier Loader (guided-diffusion)",
    "UGDNoiseAwareClassifierGuidance": "Noise-Aware Classifier Guidance",
}
