"""guided-diffusion's pixel-space models in ComfyUI: the loader, the pixel "VAE" and an empty image latent.

The loader gives a real MODEL: ComfyUI's BaseModel around the pack's ADMUNet (adm/networks.py), with ComfyUI's
discrete ε schedule set to guided-diffusion's linear one, under a ModelPatcher, so KSampler, the pack's samplers
and ComfyUI's memory management all take it. The model samples images in [−1, 1] directly; the pixel VAE maps
them to and from ComfyUI's IMAGE unchanged (ComfyUI's own where the host has one, 2025-09 on).
"""
from __future__ import annotations

import importlib.util

import torch

import comfy.latent_formats
import comfy.ldm.models.autoencoder
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import folder_paths

from ..adm.configs import DIFFUSION_MODELS, DOWNLOAD_BASE, MANIFESTS, RELEASES, SAMPLING, identify
from ..adm.networks import ADMUNet
from ..guidance.classifier import IMAGENET_CATEGORIES, class_index
from .network_weights import LoaderNode, read_state_dict

MODEL_FOLDER = "unet"  # models/unet; current ComfyUI also reads models/diffusion_models under this name
IMAGE_CHANNELS = 3
CLASS_LABEL = "ugd_adm_class"  # the conditioning's entry that ADMBaseModel passes to the UNet as y
SIDE_MULTIPLE = 32  # the 256 px UNet halves the image five times
UNCONDITIONAL = [[torch.zeros(1, 1, 1), {}]]  # the unconditional UNet has no cross-attention: never read
# The smallest AutoencoderKL that an older host's VAE constructor builds, before the identity replaces it.
_PLACEHOLDER_AUTOENCODER = {"embed_dim": IMAGE_CHANNELS, "ddconfig": {
    "double_z": True, "z_channels": IMAGE_CHANNELS, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}


class PixelLatentFormat(comfy.latent_formats.LatentFormat):
    """The latent is the image in [−1, 1]: no scale, and the preview shows its colours as they are."""
    latent_channels = IMAGE_CHANNELS
    scale_factor = 1.0

    def __init__(self):
        self.latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


class ADMBaseModel(comfy.model_base.BaseModel):
    """ComfyUI's BaseModel for an ADMUNet; a class-conditional one reads its class from the conditioning."""

    def encode_adm(self, **conditioning):
        if self.diffusion_model.num_classes is None:
            return None
        label = conditioning.get(CLASS_LABEL)
        if label is None:
            raise ValueError("This guided-diffusion model is class-conditional: connect ADM Class Conditioning to its "
                             "positive and negative inputs (not the loader's unconditional output).")
        return label


class ADMModelConfig(comfy.supported_models_base.BASE):
    unet_extra_config = {}
    sampling_settings = dict(SAMPLING)
    latent_format = PixelLatentFormat
    supported_inference_dtypes = [torch.float32]  # as the reference ran it (--use_fp16 False)

    def get_model(self, state_dict, prefix="", device=None):
        return ADMBaseModel(self, model_type=comfy.model_base.ModelType.EPS, device=device, unet_model=ADMUNet)


def adm_model(architecture: dict, state_dict: dict | None = None):
    """A MODEL (ModelPatcher) of an ADMUNet architecture, with `state_dict` loaded if given."""
    base = ADMModelConfig(dict(architecture)).get_model({})
    if state_dict is not None:
        base.diffusion_model.load_state_dict(state_dict, strict=True)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class PixelSpace(torch.nn.Module):
    """What ComfyUI's VAE object calls as its first stage model, for a model that samples pixels: the identity."""

    def encode(self, x: torch.Tensor, *_, **__) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor, *_, **__) -> torch.Tensor:
        return z


def pixel_space_vae() -> comfy.sd.VAE:
    """ComfyUI's VAE object whose encode and decode only move IMAGE's [0, 1] to the latent's [−1, 1] and back."""
    if importlib.util.find_spec("comfy.pixel_space_convert") is not None:  # ComfyUI's own, 2025-09 on
        return comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    # An older host's VAE object, made by its own constructor from a placeholder's weights, with the identity put in.
    placeholder = comfy.ldm.models.autoencoder.AutoencoderKL(**_PLACEHOLDER_AUTOENCODER).state_dict()
    vae = comfy.sd.VAE(sd=placeholder, config={"params": _PLACEHOLDER_AUTOENCODER})
    vae.first_stage_model = PixelSpace()
    vae.patcher = comfy.model_patcher.ModelPatcher(vae.first_stage_model, load_device=vae.device,
                                                   offload_device=comfy.model_management.vae_offload_device())
    vae.downscale_ratio = vae.upscale_ratio = 1
    vae.latent_channels = IMAGE_CHANNELS
    vae.memory_used_encode = vae.memory_used_decode = (
        lambda shape, dtype: 2 * shape[1] * shape[2] * shape[3] * comfy.model_management.dtype_size(dtype))
    return vae


def read_official_checkpoint(folder: str, name: str, releases: dict, what: str, missing) -> tuple[dict, dict]:
    """(the state dict of file `name` in model folder `folder`, the architecture of the release it is), found by
    the official checkpoints' keys and shapes before any network is built. A missing file raises `missing(name)`;
    another network's names the file, how it differs from the closest release, and the `releases` files."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(missing(name))
    state_dict = read_state_dict(path)
    manifest_name, problem = identify(state_dict, releases)
    if manifest_name is None:
        raise ValueError(f"{path} is not {what} ({problem}). The loader takes {', '.join(releases)}.")
    return state_dict, MANIFESTS[manifest_name][0]


def missing_checkpoint(name: str) -> str:
    where = " or ".join(folder_paths.get_folder_paths(MODEL_FOLDER))
    usual = name if name in DIFFUSION_MODELS else "256x256_diffusion_uncond.pt"
    return (f"guided-diffusion checkpoint '{name}' not found: put it in {where}. The paper's model is "
            f"{usual}, from {DOWNLOAD_BASE}{usual} ({RELEASES}).")


class ADMModelLoader(LoaderNode):
    DESCRIPTION = ("Loads a guided-diffusion (ADM) checkpoint as a pixel-space MODEL, with its pixel VAE and the "
                   "unconditional CONDITIONING to connect to both positive and negative (cfg 1). The paper's "
                   "unconditional ImageNet experiments use 256x256_diffusion_uncond.pt; the LSUN models and the "
                   "class-conditional 128, 256 and 512 px ImageNet models load too (those take ADM Class Conditioning "
                   "instead). Files go in models/unet (or models/diffusion_models); nothing downloads.")
    CATEGORY = "universal_guidance/loaders"
    RETURN_TYPES = ("MODEL", "VAE", "CONDITIONING")
    RETURN_NAMES = ("model", "pixel_vae", "unconditional")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = folder_paths.get_filename_list(MODEL_FOLDER)
        return {"required": {"ckpt_name": (files or ["256x256_diffusion_uncond.pt"], {
            "tooltip": "A guided-diffusion checkpoint in models/unet, e.g. 256x256_diffusion_uncond.pt."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name):
        if ckpt_name not in folder_paths.get_filename_list(MODEL_FOLDER):
            return missing_checkpoint(ckpt_name)
        return True

    def load(self, ckpt_name):
        state_dict, architecture = read_official_checkpoint(MODEL_FOLDER, ckpt_name, DIFFUSION_MODELS,
                                                            "a guided-diffusion UNet the loader knows",
                                                            missing_checkpoint)
        return (adm_model(architecture, state_dict), pixel_space_vae(), UNCONDITIONAL)


class ADMClassConditioning:
    DESCRIPTION = ("The class for a class-conditional guided-diffusion model (128x128_diffusion.pt, "
                   "256x256_diffusion.pt, 512x512_diffusion.pt): connect it to both positive and negative, cfg 1. "
                   "An ImageNet class name ('golden retriever') or index (207).")
    CATEGORY = "universal_guidance/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"class_name": ("STRING", {"default": "golden retriever",
                                                       "tooltip": "An ImageNet class name or index 0-999."})}}

    def encode(self, class_name):
        label = torch.tensor([class_index(class_name, IMAGENET_CATEGORIES)])
        return ([[UNCONDITIONAL[0][0], {CLASS_LABEL: label}]],)


class EmptyPixelImage:
    DESCRIPTION = ("An empty latent for a pixel-space model (ADM Model Loader): batch_size images of width×height, "
                   "3 channels. The paper's model and the noise-aware classifier take 256×256.")
    CATEGORY = "universal_guidance/latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        def size(side):
            return ("INT", {"default": 256, "min": SIDE_MULTIPLE, "max": 1024, "step": SIDE_MULTIPLE,
                            "tooltip": f"The image's {side} in pixels, a multiple of {SIDE_MULTIPLE}."})

        return {"required": {"width": size("width"), "height": size("height"),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                                    "tooltip": "How many images to sample."})}}

    def generate(self, width, height, batch_size):
        if width % SIDE_MULTIPLE or height % SIDE_MULTIPLE:
            raise ValueError(f"Empty Pixel Image: width and height must be multiples of {SIDE_MULTIPLE} for "
                             f"guided-diffusion's UNet, got {width}×{height}.")
        return ({"samples": torch.zeros(batch_size, IMAGE_CHANNELS, height, width)},)


NODE_CLASS_MAPPINGS = {
    "UGDADMModelLoader": ADMModelLoader,
    "UGDADMClassConditioning": ADMClassConditioning,
    "UGDEmptyPixelImage": EmptyPixelImage,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDADMModelLoader": "ADM Model Loader (guided-diffusion, pixel space)",
    "UGDADMClassConditioning": "ADM Class Conditioning (class-conditional guided-diffusion)",
    "UGDEmptyPixelImage": "Empty Pixel Image (pixel-space models)",
}
