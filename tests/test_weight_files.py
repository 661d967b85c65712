"""The weight files the loaders use: downloads checked against their sha256, and clear errors for files in
models/ugd that are truncated, damaged or of another network. Downloads come from file:// URLs here."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file


@pytest.fixture
def weights(comfy):
    return comfy.pack_module("nodes.network_weights")


@pytest.fixture
def ugd_folder(comfy, monkeypatch, tmp_path):
    """models/ugd is a fresh folder for the test."""
    folder = tmp_path / "ugd"
    folder.mkdir()
    extensions = comfy.folder_paths.folder_names_and_paths["ugd"][1]
    monkeypatch.setitem(comfy.folder_paths.folder_names_and_paths, "ugd", ([str(folder)], extensions))
    return folder


def _source(tmp_path, stem: str, payload: bytes, prefix: str | None = None) -> tuple[str, str]:
    """A file served at a file:// URL, named stem-<sha256 prefix>.pth like torchvision's (or with `prefix`)."""
    digest = hashlib.sha256(payload).hexdigest()
    name = f"{stem}-{prefix or digest[:8]}.pth"
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    (source / name).write_bytes(payload)
    return (source / name).as_uri(), name


def test_a_download_whose_sha256_matches_its_name_is_kept(weights, ugd_folder, tmp_path):
    buffer = tmp_path / "state.pth"
    torch.save({"w": torch.ones(2)}, buffer)
    url, name = _source(tmp_path, "tiny", buffer.read_bytes())
    path = weights.weights_path(weights.AUTO, url)
    assert path == str(ugd_folder / name) and os.path.isfile(path)
    assert torch.equal(weights.read_state_dict(path)["w"], torch.ones(2))


def test_a_download_with_another_sha256_is_not_kept_and_the_error_says_why(weights, ugd_folder, tmp_path):
    url, name = _source(tmp_path, "tiny", b"not the file the name promises", prefix="0123abcd")
    with pytest.raises(RuntimeError, match=r"its sha256 is not 0123abcd…: the download was damaged") as error:
        weights.weights_path(weights.AUTO, url)
    assert name in str(error.value) and str(ugd_folder) in str(error.value)
    assert os.listdir(ugd_folder) == []  # neither the file nor torch's temporary one


def test_every_download_the_loaders_offer_has_a_sha256(comfy, weights):
    urls = [comfy.pack_module("guidance.object_location").WEIGHTS.url, comfy.pack_module("guidance.face_identity").VGGFACE2_URL]
    urls += [w.url for _, w in comfy.pack_module("guidance.segmentation").ARCHITECTURES.values()]
    classifier = comfy.pack_module("guidance.classifier")
    urls += [classifier.default_weights(a).url for a in classifier.ARCHITECTURES]
    for url in urls:
        assert len(weights.expected_sha256(weights.file_name(url))) >= 8, url
    with pytest.raises(ValueError, match="no sha256 in its name and none is pinned"):
        weights.expected_sha256("weights.pth")


@pytest.mark.parametrize("name, damage", [
    ("detector.pth", lambda data: data[: len(data) // 2]),
    ("detector.safetensors", lambda data: data[:100]),
    ("detector.pth", lambda data: b"\0" * len(data)),
])
def test_a_truncated_or_damaged_file_names_itself_and_the_fix(comfy, ugd_folder, name, damage):
    good = ugd_folder / ("good" + os.path.splitext(name)[1])
    tensors = {"w": torch.randn(64, 64)}
    save_file(tensors, good) if name.endswith(".safetensors") else torch.save(tensors, good)
    (ugd_folder / name).write_bytes(damage(good.read_bytes()))
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["UGDObjectDetectorLoader"]()
    with pytest.raises(ValueError) as error:
        loader.load(weights=name)
    message = str(error.value)
    assert str(ugd_folder / name) in message and "truncated, damaged or not a weight file" in message
    assert "pick AUTO" in message


def test_a_file_of_another_network_names_itself_and_what_it_does_not_fit(comfy, ugd_folder):
    save_file({"backbone.body.conv1.weight": torch.zeros(1)}, ugd_folder / "classifier.safetensors")
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["UGDObjectDetectorLoader"]()
    with pytest.raises(ValueError) as error:
        loader.load(weights="classifier.safetensors")
    message = str(error.value)
    assert message.startswith(str(ugd_folder / "classifier.safetensors") + ": The weights do not fit fasterrcnn")
    assert "Use fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth" in message
