"""Each guidance of paper §4.2 (and SDG's) as a ComfyUI workflow, run by the real executor with stand-in networks."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import graphs
from test_comfyui import error_text, images, run_ok

WIDTH, HEIGHT = 64, 48


def save_input(comfy, name, pixels):
    path = os.path.join(comfy.folder_paths.get_input_directory(), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)
    return name


@pytest.fixture
def inputs(comfy):
    """A VOC-coloured segmentation map (a dog on the left, a person on the right) and a random reference photo."""
    target = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    target[8:44, 4:30] = (64, 0, 128)
    target[4:46, 36:60] = (192, 128, 128)
    photo = (np.random.RandomState(0).rand(HEIGHT, WIDTH, 3) * 255).astype(np.uint8)
    return {"target_map": save_input(comfy, "ugd_test_voc_map.png", target), "photo": save_input(comfy, "ugd_test_photo.png", photo)}


def loss_outside_the_graph(comfy, class_type, files, settings):
    """The guidance loss of the stand-in network (seed 0), built again here from the same inputs."""
    def load(name):
        return torch.from_numpy(np.asarray(Image.open(os.path.join(comfy.folder_paths.get_input_directory(), name)), np.float32) / 255)[None]

    def module(name):
        return comfy.pack_module(f"guidance.{name}")

    if class_type == "UGDSegmentationGuidance":
        seg = module("segmentation")
        return seg.SegmentationLoss(seg.small_random_segmenter(0), seg.class_map_from_colours(load(files["target_map"])))
    if class_type == "UGDFaceIdentityGuidance":
        face = module("face_identity")
        networks = face.small_random_face_networks(0)
        return face.FaceIdentityLoss(networks, face.reference_embeddings(networks, load(files["photo"])))
    if class_type == "UGDObjectLocationGuidance":
        od = module("object_location")
        return od.ObjectLocationLoss(od.small_random_detector(0), od.parse_boxes(settings["boxes"]), settings["proposal_seed"])
    if class_type == "UGDClassifierGuidance":
        cls = module("classifier")
        return cls.ClassifierLoss(cls.small_random_classifier(0), cls.class_index(settings["target_class"]))
    clip = module("clip_similarity")
    model = clip.small_random_clip(0)
    reference = load(files["photo"]).movedim(-1, 1)
    if class_type == "UGDCLIPImageGuidance":
        return clip.CLIPSimilarityLoss(model, clip.encode_image(model, reference))
    gram = module("clip_gram_style")
    return gram.CLIPGramStyleLoss(model, gram.style_grams(model, reference))


# class type, its inputs (image inputs name a file of the `inputs` fixture), settings, and the loss ratio guided / unguided
# to beat. The random stand-ins' cross-entropies move little (near-uniform logits), hence their smaller margins;
# the detector's loss moves mostly under backward guidance, hence its larger step.
CASES = {
    "segmentation": ("UGDSegmentationGuidance", {"class_name": "dog", "outside_mask": "background", "target_map": "target_map"},
                     {"weight": 0.5, "backward_steps": 10, "backward_lr": 0.5}, 0.97),
    "face": ("UGDFaceIdentityGuidance", {"reference": "photo"}, {"weight": 2.0, "backward_steps": 10, "backward_lr": 0.5}, 0.9),
    "object location": ("UGDObjectLocationGuidance", {"boxes": "dog 0.05 0.1 0.5 0.9\nperson 0.55 0.1 0.95 0.9", "units": "auto", "proposal_seed": 0},
                        {"weight": 0.5, "backward_steps": 10, "backward_lr": 1.0}, 0.97),
    "classifier": ("UGDClassifierGuidance", {"target_class": "goldfish"}, {"weight": 0.5, "backward_steps": 10, "backward_lr": 0.5}, 0.98),
    "clip image": ("UGDCLIPImageGuidance", {"image": "photo"}, {"weight": 0.005, "backward_steps": 10, "backward_lr": 0.5}, 0.9),
    "clip gram style": ("UGDCLIPGramStyleGuidance", {"style_image": "photo"}, {"weight": 0.05, "backward_steps": 10, "backward_lr": 0.5}, 0.9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_guidance_ends_with_a_lower_loss_than_the_same_seed_unguided(comfy, inputs, case):
    class_type, guidance_inputs, settings, ratio = CASES[case]
    graph = graphs.base_graph(width=WIDTH, height=HEIGHT, batch=2)
    wired = {}
    for key, value in guidance_inputs.items():
        if value in inputs:
            wired[key] = graphs.load_image(graph, "i" + key, inputs[value])
        else:
            wired[key] = value
    guidance = graphs.stand_in_guidance(graph, "6", class_type, **wired, **settings)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance, steps=6, recurrence=2), f"{case}_guided")
    graphs.save(graph, "10", graphs.plain_sampler(graph, "9", steps=6), f"{case}_unguided")
    result = run_ok(comfy, graph)
    loss = loss_outside_the_graph(comfy, class_type, inputs, guidance_inputs)
    with torch.no_grad():
        guided, unguided = (loss.bind("cpu")(torch.from_numpy(images(comfy, result, n)).movedim(-1, 1)) for n in ("8", "10"))
    assert (guided < ratio * unguided).all(), (guided, unguided)


def test_a_segmentation_mask_with_a_class_guides_too(comfy):
    graph = graphs.base_graph(width=WIDTH, height=HEIGHT, batch=1)
    graph["m"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": WIDTH, "height": HEIGHT}}
    guidance = graphs.stand_in_guidance(graph, "6", "UGDSegmentationGuidance", class_name="person", outside_mask="ignore",
                                        mask=["m", 0], weight=0.5)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance, recurrence=1), "seg_mask")
    assert images(comfy, run_ok(comfy, graph), "8").shape == (1, HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("class_type, inputs, message", [
    ("UGDObjectLocationGuidance", {"boxes": "unicorn 1 2 30 40", "units": "auto", "proposal_seed": 0}, "Unknown object class 'unicorn'"),
    ("UGDObjectLocationGuidance", {"boxes": "", "units": "auto", "proposal_seed": 0}, "The box list is empty"),
    ("UGDObjectLocationGuidance", {"boxes": "dog 1 2 30 40\n---\ncat 1 2 30 40", "units": "auto", "proposal_seed": 0},
     "There are 2 box sets for a batch of 1"),
    ("UGDClassifierGuidance", {"target_class": "unicorn"}, "Unknown class 'unicorn'"),
    ("UGDSegmentationGuidance", {"class_name": "dog", "outside_mask": "background"}, "connect either target_map"),
])
def test_bad_guidance_input_is_named_before_sampling(comfy, class_type, inputs, message):
    graph = graphs.base_graph(batch=1)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", graphs.stand_in_guidance(graph, "6", class_type, **inputs, weight=1.0)), "bad")
    text = error_text(comfy.run(graph))
    assert message in text


def test_a_target_map_with_unknown_colours_is_rejected(comfy):
    name = save_input(comfy, "ugd_test_not_voc.png", np.full((HEIGHT, WIDTH, 3), (10, 200, 90), np.uint8))
    graph = graphs.base_graph(width=WIDTH, height=HEIGHT, batch=1)
    guidance = graphs.stand_in_guidance(graph, "6", "UGDSegmentationGuidance", class_name="dog", outside_mask="background",
                                        target_map=graphs.load_image(graph, "5", name), weight=1.0)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance), "bad")
    assert "colours that are none of the segmenter's 21 classes" in error_text(comfy.run(graph))


LOADERS = {  # loader: (its own inputs, the guidance it feeds, that guidance's input name and other inputs)
    "UGDSegmentationModelLoader": ({"architecture": "lraspp_mobilenet_v3_large"}, "UGDSegmentationGuidance", "segmentation_model",
                                   {"class_name": "dog", "outside_mask": "background"}),
    "UGDFaceModelLoader": ({}, "UGDFaceIdentityGuidance", "face_model", {}),
    "UGDObjectDetectorLoader": ({}, "UGDObjectLocationGuidance", "detector", {"boxes": "dog 1 2 30 40", "units": "auto", "proposal_seed": 0}),
    "UGDClassifierModelLoader": ({"architecture": "resnet50"}, "UGDClassifierGuidance", "classifier", {"target_class": "goldfish"}),
}


def loaded_guidance(graph, loader, weights, **extra):
    """Loader (l) feeding its guidance (6), guiding sampler 7, saved by 8."""
    loader_inputs, guidance, network_input, guidance_inputs = LOADERS[loader]
    graph["l"] = {"class_type": loader, "inputs": {"weights": weights, **loader_inputs}}
    graph["6"] = {"class_type": guidance, "inputs": {network_input: ["l", 0], **guidance_inputs, **{**graphs.GUIDANCE_DEFAULTS, "weight": 1.0}, **extra}}
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", ["6", 0], recurrence=1, steps=2), "loaded")


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_missing_weight_file_is_named_with_where_to_put_it(comfy, loader):
    graph = graphs.base_graph(batch=1)
    loaded_guidance(graph, loader, "missing.pth")
    text = error_text(comfy.run(graph))
    assert "missing.pth" in text and os.path.join("models", "ugd") in text


def test_a_failed_download_names_the_file_and_where_to_put_it(comfy, monkeypatch, tmp_path):
    def offline(url, destination, hash_prefix=None, progress=True):
        raise OSError("no route to host (simulated)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setitem(comfy.folder_paths.folder_names_and_paths, "ugd", ([str(tmp_path)], {".pth", ".pt", ".safetensors"}))
    graph = graphs.base_graph(batch=1)
    loaded_guidance(graph, "UGDClassifierModelLoader", "(auto: models/ugd, downloaded if missing)")
    text = error_text(comfy.run(graph))
    assert "Could not download resnet50-11ad3fa6.pth from https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in text
    assert "no route to host" in text and str(tmp_path) in text


def test_face_model_from_a_file_uses_real_mtcnn_and_rejects_a_reference_without_a_face(comfy, monkeypatch, tmp_path):
    facenet = pytest.importorskip("facenet_pytorch")
    skimage_data = pytest.importorskip("skimage.data")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(facenet.InceptionResnetV1().state_dict(), str(tmp_path / "random_inception_resnet_v1.safetensors"))
    monkeypatch.setitem(comfy.folder_paths.folder_names_and_paths, "ugd", ([str(tmp_path)], {".safetensors"}))
    astronaut = save_input(comfy, "ugd_test_astronaut.png", skimage_data.astronaut())
    coffee = save_input(comfy, "ugd_test_coffee.png", skimage_data.coffee())
    for photo, works in [(astronaut, True), (coffee, False)]:
        graph = graphs.base_graph(batch=1)
        loaded_guidance(graph, "UGDFaceModelLoader", "random_inception_resnet_v1.safetensors",
                        reference=graphs.load_image(graph, "5", photo))
        result = comfy.run(graph)
        if works:  # the stand-in samples hold no face, so the run goes unguided, with a warning
            assert result.success, result.errors
        else:
            assert "No face was found in reference image 1 of 1" in error_text(result)
