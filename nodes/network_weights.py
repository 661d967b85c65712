"""What every guidance-network loader shares: picking a weight file, downloading it once, and memory management.

A loader offers the files in models/ugd plus AUTO. AUTO uses the network's usual file name in models/ugd
and downloads it there on first use, saying where; offline, the error names the file and the folder.
"""
from __future__ import annotations

import logging
import os

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from .model_folder import MODEL_FOLDER, model_folder_hint

log = logging.getLogger(__name__)

AUTO = "(auto: models/ugd, downloaded if missing)"


class LoaderNode:
    """Base of the pack's loader nodes.

    ComfyUI before 2024-08 reuses a cached output when the previous prompt had a node of another type with
    the same id and inputs, as two shipped workflows' loaders can (weights="(auto …)", seed=0). It does
    compare IS_CHANGED values, so a per-class value keeps one loader's model from reaching another's users.
    """

    @classmethod
    def IS_CHANGED(cls, **_):
        return cls.__name__


def weights_input(filename: str) -> tuple:
    """A ComfyUI combo of AUTO and the files in models/ugd."""
    return ([AUTO] + folder_paths.get_filename_list(MODEL_FOLDER), {
        "default": AUTO,
        "tooltip": f"A weight file in models/ugd. AUTO uses {filename} there and downloads it on first use."})


class WeightsFileLoader(LoaderNode):
    """A loader whose `weights` input (see weights_input) is AUTO or a file in models/ugd."""

    @classmethod
    def VALIDATE_INPUTS(cls, weights):
        """A named file must exist; checked before anything runs."""
        if weights != AUTO and weights not in folder_paths.get_filename_list(MODEL_FOLDER):
            return f"Guidance network weights '{weights}' not found: put the file in {model_folder_hint()}."
        return True


def file_name(url: str) -> str:
    """The usual file name of weights downloaded from `url`: the URL's last part."""
    return url.rsplit("/", 1)[-1]


def weights_path(weights: str, url: str) -> str:
    """The path of the chosen file; with AUTO, the URL's file name in models/ugd, downloaded from `url` if missing."""
    filename = file_name(url)
    if weights != AUTO:
        return folder_paths.get_full_path(MODEL_FOLDER, weights)
    existing = folder_paths.get_full_path(MODEL_FOLDER, filename)
    if existing:
        return existing
    destination = os.path.join(folder_paths.get_folder_paths(MODEL_FOLDER)[0], filename)
    log.info("Downloading %s from %s into %s (once).", filename, url, destination)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, destination, progress=True)
    except Exception as error:
        raise RuntimeError(
            f"Could not download {filename} from {url}: {error}. Without internet, get the file elsewhere and put "
            f"it in {model_folder_hint()}, keeping its name {filename}."
        ) from error
    return destination


def load_state_dict(weights: str, url: str) -> dict:
    return comfy.utils.load_torch_file(weights_path(weights, url), safe_load=True)


def managed(module: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    """`module` under ComfyUI's memory management, moved to the GPU with the sampler's models."""
    return comfy.model_patcher.ModelPatcher(
        module,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
