"""What every guidance-network loader shares: picking a weight file, downloading it once, reading it, and memory
management.

A loader offers the files in models/ugd plus AUTO. AUTO uses the network's usual file name in models/ugd
and downloads it there on first use, saying where; offline, the error names the file and the folder. A download
is checked against its sha256 before it is kept: the prefix in a torchvision file name, or the hash pinned in
PINNED_SHA256. A file that cannot be read, or holds another network's weights, is an error naming it and the fix.
"""
from __future__ import annotations

import logging
import os
import re

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from .model_folder import MODEL_FOLDER, model_folder_hint

log = logging.getLogger(__name__)

AUTO = "(auto: models/ugd, downloaded if missing)"
# sha256 of the downloads whose file names carry none (torchvision's carry a prefix: name-<sha256 prefix>.pth).
PINNED_SHA256 = {
    "20180402-114759-vggface2.pt": "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b",
}


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


def expected_sha256(filename: str) -> str:
    """The sha256 (or its prefix) a download of `filename` must have."""
    if filename in PINNED_SHA256:
        return PINNED_SHA256[filename]
    named = re.search(r"-([0-9a-f]{8,64})\.[a-z]+$", filename)
    if named is None:
        raise ValueError(f"{filename} has no sha256 in its name and none is pinned: add it to PINNED_SHA256.")
    return named.group(1)


def weights_path(weights: str, url: str) -> str:
    """The path of the chosen file; with AUTO, the URL's file name in models/ugd, downloaded from `url` if missing."""
    filename = file_name(url)
    if weights != AUTO:
        return folder_paths.get_full_path(MODEL_FOLDER, weights)
    existing = folder_paths.get_full_path(MODEL_FOLDER, filename)
    if existing:
        return existing
    destination = os.path.join(folder_paths.get_folder_paths(MODEL_FOLDER)[0], filename)
    sha256 = expected_sha256(filename)
    log.info("Downloading %s from %s into %s (once).", filename, url, destination)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    try:  # into a temporary file, which torch deletes unless its sha256 starts with the expected one
        torch.hub.download_url_to_file(url, destination, hash_prefix=sha256, progress=True)
    except RuntimeError as error:
        if "invalid hash value" not in str(error):
            raise _download_error(filename, url, error) from error
        raise RuntimeError(
            f"Downloaded {filename} from {url}, but its sha256 is not {sha256[:16]}…: the download was damaged or "
            f"the file changed at its source. It was not kept. Run again to retry, or put a good copy of {filename} "
            f"in {model_folder_hint()}."
        ) from error
    except Exception as error:
        raise _download_error(filename, url, error) from error
    return destination


def _download_error(filename: str, url: str, error: Exception) -> RuntimeError:
    return RuntimeError(f"Could not download {filename} from {url}: {error}. Without internet, get the file elsewhere "
                        f"and put it in {model_folder_hint()}, keeping its name {filename}.")


def read_state_dict(path: str) -> dict:
    """The weight file's state dict; a file that cannot be read is a ValueError naming it and the fix."""
    try:
        return comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"Cannot read the weight file {path} ({type(error).__name__}: {reason}): it is truncated, damaged or not "
            f"a weight file. Replace it with a good copy, or delete it and pick AUTO to download the usual file."
        ) from error


def built_from(path: str, build) -> torch.nn.Module:
    """build(state dict of the file at path); weights of another network are an error naming the file."""
    state_dict = read_state_dict(path)
    try:
        return build(state_dict)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def load_network(weights: str, url: str, build) -> torch.nn.Module:
    """The network that build(state dict) makes from the chosen file (see weights_path)."""
    return built_from(weights_path(weights, url), build)


def managed(module: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    """`module` under ComfyUI's memory management, moved to the GPU with the sampler's models."""
    return comfy.model_patcher.ModelPatcher(
        module,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
