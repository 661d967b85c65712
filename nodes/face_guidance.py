"""Face identity guidance nodes (paper §4.2, Fig. 2): MTCNN + InceptionResnetV1 loader and the guidance."""
from __future__ import annotations

import comfy.model_management

from ..guidance.face_identity import VGGFACE2_URL, FaceIdentityLoss, build_face_networks, reference_embeddings
from .guidance_settings import GUIDANCE, guidance_output, settings_inputs
from .network_weights import file_name, load_network, managed, weights_input, WeightsFileLoader

FACE_MODEL = "UGD_FACE_MODEL"
VGGFACE2_FILE = file_name(VGGFACE2_URL)


class FaceModelLoader(WeightsFileLoader):
    DESCRIPTION = ("Loads facenet-pytorch's MTCNN face detector (its weights ship with the package) and InceptionResnetV1 "
                   f"face recognition, trained on VGGFace2 ({VGGFACE2_FILE} in models/ugd).")
    CATEGORY = "universal_guidance/loaders"
    RETURN_TYPES = (FACE_MODEL,)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"weights": weights_input(VGGFACE2_FILE)}}

    def load(self, weights):
        return (managed(load_network(weights, VGGFACE2_URL, build_face_networks)),)


class FaceIdentityGuidance:
    DESCRIPTION = ("Guides the face in the image towards the identity of a reference face: ℓ1 between face-recognition "
                   "embeddings of MTCNN crops (paper §4.2). A sample where no face is found at a step is not guided "
                   "there. Paper settings: w = 20000, recurrence k = 2, a text prompt, cfg 7.5.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_model": (FACE_MODEL, {"tooltip": "From Face Model Loader."}),
            "reference": ("IMAGE", {"tooltip": "A photo of the face; 1 for all samples, or one per sample."}),
            **settings_inputs(),
        }}

    def guide(self, face_model, reference, **settings):
        comfy.model_management.load_models_gpu([face_model])
        target = reference_embeddings(face_model.model, reference)
        return guidance_output("face identity guidance", FaceIdentityLoss(face_model.model, target), [face_model], **settings)


NODE_CLASS_MAPPINGS = {
    "UGDFaceModelLoader": FaceModelLoader,
    "UGDFaceIdentityGuidance": FaceIdentityGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDFaceModelLoader": "Face Model Loader (MTCNN + FaceNet)",
    "UGDFaceIdentityGuidance": "Face Identity Guidance",
}
