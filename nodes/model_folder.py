"""The `ugd` models folder, where guidance network weights live."""
from __future__ import annotations

import os

import folder_paths

MODEL_FOLDER = "ugd"
EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}


def register_model_folder() -> None:
    """Register models/ugd with ComfyUI, keeping any path an extra_model_paths.yaml gave it."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER in folder_paths.folder_names_and_paths:
        paths, extensions = folder_paths.folder_names_and_paths[MODEL_FOLDER]
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths + [default] if default not in paths else paths, set(extensions) | EXTENSIONS)
    else:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = ([default], set(EXTENSIONS))


def model_folder_hint() -> str:
    return " or ".join(folder_paths.get_folder_paths(MODEL_FOLDER))
