"""Classifier guidance nodes: any torchvision ImageNet classifier, guided towards one class."""
from __future__ import annotations

from ..guidance.classifier import ARCHITECTURES, ClassifierLoss, build_classifier, class_index, default_weights
from .guidance_settings import GUIDANCE, guidance_output, settings_inputs
from .network_weights import load_network, managed, weights_input, WeightsFileLoader

CLASSIFIER_MODEL = "UGD_CLASSIFIER_MODEL"


class ClassifierModelLoader(WeightsFileLoader):
    DESCRIPTION = ("Loads a torchvision ImageNet classifier by name, with the file of its default torchvision weights "
                   "in models/ugd (e.g. resnet50-11ad3fa6.pth), or any state dict of that architecture.")
    CATEGORY = "universal_guidance/loaders"
    RETURN_TYPES = (CLASSIFIER_MODEL,)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "architecture": (list(ARCHITECTURES), {"default": "resnet50",
                                                   "tooltip": "torchvision's ImageNet classifier."}),
            "weights": weights_input("torchvision's default file for the architecture"),
        }}

    def load(self, architecture, weights):
        url = default_weights(architecture).url
        return (managed(load_network(weights, url, lambda state: build_classifier(architecture, state))),)


class ClassifierGuidance:
    DESCRIPTION = ("Guides the image towards an ImageNet class: cross-entropy of the classifier's logits. The class is "
                   "a name such as 'golden retriever' or an index 0-999. Used with segmentation and inpainting in the "
                   "paper's segmentation-guided inpainting (§5.1).")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "classifier": (CLASSIFIER_MODEL, {"tooltip": "From Classifier Model Loader."}),
            "target_class": ("STRING", {"default": "golden retriever", "tooltip": "A class name or index of the classifier: ImageNet's ('golden retriever'), or the toy world's ('red circle')."}),
            **settings_inputs(),
        }}

    def guide(self, classifier, target_class, **settings):
        model = classifier.model
        index = class_index(target_class, model.categories)
        loss = ClassifierLoss(model, index)
        return guidance_output(f"classifier guidance ({model.categories[index]})", loss, [classifier], **settings)


NODE_CLASS_MAPPINGS = {
    "UGDClassifierModelLoader": ClassifierModelLoader,
    "UGDClassifierGuidance": ClassifierGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDClassifierModelLoader": "Classifier Model Loader (torchvision)",
    "UGDClassifierGuidance": "Classifier Guidance",
}
