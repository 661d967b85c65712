"""The guidance networks of paper §4.2 and SDG on their own: preprocessing, losses, bookkeeping and bad input.

Random-weight networks throughout, except MTCNN, whose real weights ship with facenet-pytorch.
"""
from __future__ import annotations

import logging

import numpy as np
import open_clip
import pytest
import torch

from guidance import classifier, clip_gram_style, face_identity, object_location, segmentation
from guidance.clip_similarity import LOGIT_SCALE, CLIPSimilarityLoss, encode_image, small_random_clip
from guidance.images import IMAGENET_MEAN, IMAGENET_STD

SIZES = [(1, 40, 56), (2, 40, 56)]  # batch, height, width: not square


def gradient_of(loss, image):
    image = image.clone().requires_grad_(True)
    value = loss(image)
    (grad,) = torch.autograd.grad(value.sum(), image)
    return value, grad


def assert_useful_gradient(grad):
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


class InputRecorder(torch.nn.Module):
    """Records what a wrapped network is fed and answers with fixed logits."""

    def __init__(self, outputs):
        super().__init__()
        self.device_anchor = torch.nn.Parameter(torch.zeros(()))  # losses find the device from a parameter
        self.outputs, self.seen = outputs, None

    def forward(self, x):
        self.seen = x.detach()
        return self.outputs(x)


# --- segmentation -----------------------------------------------------------------------------------------------

def test_voc_palette_and_colour_maps():
    palette = segmentation.voc_palette()
    assert palette[segmentation.VOC_CLASSES.index("person")].tolist() == [192, 128, 128]
    assert palette[segmentation.VOC_CLASSES.index("dog")].tolist() == [64, 0, 128]
    assert palette[segmentation.IGNORE].tolist() == [224, 224, 192]
    image = torch.zeros(1, 4, 6, 3)
    image[0, :2, :3] = torch.tensor([64, 0, 128]) / 255
    image[0, 3, 5] = torch.tensor([224, 224, 192]) / 255
    image[0, 2, 0] = torch.tensor([195, 126, 128]) / 255  # person, a few levels off
    classes = segmentation.class_map_from_colours(image)
    assert classes.shape == (1, 4, 6)
    assert (classes[0, :2, :3] == 12).all() and classes[0, 3, 5] == 255 and classes[0, 2, 0] == 15
    assert int((classes == 0).sum()) == 24 - 6 - 2


def test_unknown_colours_are_rejected_with_the_pixel():
    image = torch.zeros(1, 4, 6, 3)
    image[0, 1, 2] = torch.tensor([0.5, 0.9, 0.1])
    with pytest.raises(ValueError, match=r"1 pixels in colours that are none of the segmenter's 21 classes, e.g. RGB \(128, 230, 26\) at x=2, y=1"):
        segmentation.class_map_from_colours(image)


def test_a_map_may_use_only_the_connected_segmenters_classes():
    shapes = ("background", "circle", "square", "triangle", "cross")
    image = torch.zeros(1, 2, 2, 3)
    image[0, 0, 0] = segmentation.voc_palette()[4].float() / 255
    assert segmentation.class_map_from_colours(image, shapes).tolist() == [[[4, 0], [0, 0]]]
    image[0, 1, 1] = segmentation.voc_palette()[segmentation.VOC_CLASSES.index("dog")].float() / 255
    with pytest.raises(ValueError, match=r"none of the segmenter's 5 classes, e.g. RGB \(64, 0, 128\) at x=1, y=1.*cross \(0, 0, 128\)\)"):
        segmentation.class_map_from_colours(image, shapes)
    with pytest.raises(ValueError, match="no class 'dog'; choose one of circle, square, triangle, cross"):
        segmentation.class_map_from_mask(torch.ones(1, 2, 2), "dog", classes=shapes)


def test_mask_and_class_name_give_a_class_map():
    mask = torch.zeros(2, 4, 4)
    mask[:, 1:3, 1:3] = 1
    dog = segmentation.VOC_CLASSES.index("dog")
    classes = segmentation.class_map_from_mask(mask, "dog")
    assert (classes[:, 1:3, 1:3] == dog).all() and int((classes == 0).sum()) == 2 * 12
    ignored = segmentation.class_map_from_mask(mask, "dog", outside="ignore")
    assert int((ignored == 255).sum()) == 2 * 12
    with pytest.raises(ValueError, match="The segmenter has no class 'doggo'"):
        segmentation.class_map_from_mask(mask, "doggo")
    with pytest.raises(ValueError, match="The mask is empty"):
        segmentation.class_map_from_mask(torch.zeros(1, 4, 4), "dog")


def test_segmenter_preprocessing_matches_the_reference():
    network = InputRecorder(lambda x: {"out": torch.zeros(x.shape[0], 21, *x.shape[-2:])})
    segmenter = segmentation.Segmenter(network)
    segmenter(torch.full((2, 3, 40, 56), 0.5))
    assert network.seen.shape == (2, 3, 520, 728)  # shorter side to 520, as 512² → 520² in the reference
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(network.seen.mean(dim=(0, 2, 3)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch, height, width", SIZES)
def test_segmentation_loss_shapes_and_gradient(batch, height, width):
    target = torch.randint(0, 21, (1, 20, 28))
    loss = segmentation.SegmentationLoss(segmentation.small_random_segmenter(0), target)
    loss.check(batch, height, width)
    value, grad = gradient_of(loss.bind("cpu"), torch.rand(batch, 3, height, width))
    assert value.shape == (batch,) and (value > 0).all()
    assert_useful_gradient(grad)


def test_segmentation_loss_is_minimal_when_the_prediction_is_the_target():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 12
    onehot = torch.nn.functional.one_hot(target, 21).movedim(-1, 1).float()
    network = InputRecorder(lambda x: {"out": 30 * torch.nn.functional.interpolate(onehot, size=x.shape[-2:])})
    segmenter = segmentation.Segmenter(network, input_size=8)
    image = torch.rand(1, 3, 8, 8)
    exact = segmentation.SegmentationLoss(segmenter, target).bind("cpu")(image)
    wrong = segmentation.SegmentationLoss(segmenter, torch.full_like(target, 12)).bind("cpu")(image)
    assert float(exact) < 1e-6 < float(wrong)


def test_ignored_pixels_carry_no_loss():
    logits = torch.randn(1, 21, 4, 4)
    target = torch.randint(0, 21, (1, 4, 4))
    half = target.clone()
    half[:, :2] = segmentation.IGNORE
    expected = torch.nn.functional.cross_entropy(logits[:, :, 2:], target[:, 2:])
    torch.testing.assert_close(segmentation.pixel_cross_entropy(logits, half)[0], expected)


@pytest.mark.parametrize("target, message", [
    (torch.zeros(1, 30, 30, dtype=torch.long), "the target map is 30x30"),
    (torch.zeros(3, 40, 56, dtype=torch.long), "batch of 3"),
])
def test_segmentation_target_of_the_wrong_size_is_rejected(target, message):
    with pytest.raises(ValueError, match=message):
        segmentation.SegmentationLoss(segmentation.small_random_segmenter(0), target).check(2, 40, 56)


@pytest.mark.parametrize("architecture", sorted(segmentation.ARCHITECTURES))
def test_torchvision_segmenters_load_their_own_state_dicts(architecture):
    builder, _ = segmentation.ARCHITECTURES[architecture]
    kwargs = {"aux_loss": True} if architecture.startswith("deeplab") else {}
    saved = builder(weights=None, weights_backbone=None, num_classes=21, **kwargs).state_dict()
    segmenter = segmentation.build_segmenter(architecture, saved)
    assert not segmenter.training and not any(p.requires_grad for p in segmenter.parameters())
    with pytest.raises(ValueError, match=f"do not fit {architecture}"):
        segmentation.build_segmenter(architecture, {"conv.weight": torch.zeros(1)})


# --- face identity ----------------------------------------------------------------------------------------------

class NoFaceDetector(torch.nn.Module):
    def detect(self, pixels):
        return [None] * pixels.shape[0]


def test_face_crop_is_160_px_and_standardised_like_facenet():
    networks = face_identity.small_random_face_networks(0)
    (crop,) = networks.crops(torch.ones(1, 3, 40, 56))
    assert crop.shape == (3, 160, 160)
    torch.testing.assert_close(crop, torch.full_like(crop, (255 - 127.5) / 128))
    (grey,) = networks.crops(torch.full((1, 3, 40, 56), 0.5))
    assert grey.abs().max() < 1e-5


@pytest.mark.parametrize("batch, height, width", SIZES)
def test_face_loss_is_zero_at_the_reference_face_and_has_a_gradient(batch, height, width):
    networks = face_identity.small_random_face_networks(0)
    reference = torch.rand(1, height, width, 3)
    loss = face_identity.FaceIdentityLoss(networks, face_identity.reference_embeddings(networks, reference))
    loss.check(batch, height, width)
    bound = loss.bind("cpu")
    same = reference.movedim(-1, 1).expand(batch, -1, -1, -1)
    assert torch.allclose(bound(same), torch.zeros(batch), atol=1e-6)
    value, grad = gradient_of(bound, torch.rand(batch, 3, height, width))
    assert value.shape == (batch,) and (value > 0).all()
    assert_useful_gradient(grad)


def test_a_sample_without_a_face_is_not_guided_and_warned_about_once(caplog):
    networks = face_identity.small_random_face_networks(0)
    target = face_identity.reference_embeddings(networks, torch.rand(1, 40, 56, 3))
    networks.detector = NoFaceDetector()
    bound = face_identity.FaceIdentityLoss(networks, target).bind("cpu")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            value, grad = gradient_of(bound, torch.rand(2, 3, 40, 56))
            assert (value == 0).all() and (grad == 0).all()
    assert sum("no face found" in r.getMessage() for r in caplog.records) == 1


def test_a_reference_without_a_face_is_an_error():
    networks = face_identity.small_random_face_networks(0)
    networks.detector = NoFaceDetector()
    with pytest.raises(ValueError, match="No face was found in reference image 1 of 2"):
        face_identity.reference_embeddings(networks, torch.rand(2, 40, 56, 3))


def test_face_references_must_match_the_batch():
    with pytest.raises(ValueError, match="3 reference faces cannot guide 2 samples"):
        face_identity.FaceIdentityLoss(face_identity.small_random_face_networks(0), torch.zeros(3, 64)).check(2, 64, 64)


def test_inception_resnet_weights_are_checked():
    with pytest.raises(ValueError, match="20180402-114759-vggface2.pt"):
        face_identity.build_face_networks({"conv.weight": torch.zeros(1)})


# --- face identity with facenet-pytorch's real MTCNN on scikit-image photos --------------------------------------

def photo(name):
    data = pytest.importorskip("skimage.data")
    return torch.from_numpy(np.asarray(getattr(data, name)(), np.float32) / 255)[None]


@pytest.fixture(scope="module")
def real_face_networks():
    pytest.importorskip("facenet_pytorch")
    return face_identity.build_face_networks()  # real MTCNN, random-weight InceptionResnetV1


def test_mtcnn_finds_the_astronauts_face_and_none_in_the_coffee(real_face_networks):
    detector = real_face_networks.detector
    (box,) = detector.detect(photo("astronaut") * 255)
    assert box is not None
    x0, y0, x1, y1 = box  # the face is at about (181, 62)-(268, 172) of the 512 px photo
    assert 160 < x0 < 200 and 40 < y0 < 85 and 250 < x1 < 290 and 150 < y1 < 195
    assert detector.detect(photo("coffee") * 255) == [None]


def test_face_guidance_runs_end_to_end_on_the_astronaut(real_face_networks):
    astronaut = photo("astronaut")
    target = face_identity.reference_embeddings(real_face_networks, astronaut)
    assert target.shape == (1, 512)
    bound = face_identity.FaceIdentityLoss(real_face_networks, target).bind("cpu")
    image = astronaut.movedim(-1, 1)
    assert float(bound(image)) < 1e-6
    value, grad = gradient_of(bound, (image + 0.1 * torch.randn_like(image)).clamp(0, 1))
    assert float(value.detach()) > 0
    assert_useful_gradient(grad)
    face_rows = grad.abs().sum(dim=(0, 1, 3))
    assert face_rows[:40].sum() == 0 and face_rows[200:].sum() == 0  # only the face crop gets a gradient
    with pytest.raises(ValueError, match="No face was found in reference image 1 of 1"):
        face_identity.reference_embeddings(real_face_networks, photo("coffee"))


# --- object location --------------------------------------------------------------------------------------------

def test_boxes_are_parsed_with_coco_labels():
    boxes = object_location.parse_boxes("# the reference's first example\ndog 38 166 218 346\n\nPerson 284, 56, 484, 456")
    assert boxes.labels == (18, 1) and not boxes.fractions
    assert boxes.corners == ((38, 166, 218, 346), (284, 56, 484, 456))
    fractions = object_location.parse_boxes("traffic light 0.1 0.2 0.3 0.4\nteddy_bear 0.5 0.5 1 1")
    assert fractions.fractions and fractions.labels == (10, 88)
    torch.testing.assert_close(fractions.in_pixels(100, 200)[0], torch.tensor([20.0, 20.0, 60.0, 40.0]))
    assert not object_location.parse_boxes("dog 0 0 1 1", units="pixels").fractions


@pytest.mark.parametrize("text, units, message", [
    ("", "auto", "The box list is empty"),
    ("# only a comment", "auto", "The box list is empty"),
    ("dog 1 2 3", "auto", r"Box line 1 \('dog 1 2 3'\) is not 'label x0 y0 x1 y1'"),
    ("dog 1 2 3 4\ncat a b c d", "auto", "Box line 2"),
    ("dog 30 20 10 40", "auto", "needs 0 <= x0 < x1"),
    ("dgo 1 2 3 4", "auto", "Unknown object class 'dgo'. Did you mean 'dog'"),
    ("N/A 1 2 3 4", "auto", "Unknown object class 'N/A'"),
    ("dog 0.1 0.2 3 4", "fractions", r"lie in \[0, 1\]"),
    ("dog 1 2 3 4", "inches", "units must be one of"),
])
def test_bad_box_lists_are_rejected(text, units, message):
    with pytest.raises(ValueError, match=message):
        object_location.parse_boxes(text, units)


def test_box_sets_give_each_image_of_a_batch_its_own_boxes():
    sets = object_location.parse_box_sets("dog 38 166 218 346\n---\n# the second image\ncat 0.1 0.1 0.5 0.5\nperson 0.5 0 1 1")
    assert [s.labels for s in sets] == [(18,), (17, 1)] and [s.fractions for s in sets] == [False, True]
    assert object_location.parse_box_sets("dog 1 2 3 4") == (object_location.parse_boxes("dog 1 2 3 4"),)
    with pytest.raises(ValueError, match="Box line 3"):  # numbered in the whole text
        object_location.parse_box_sets("dog 1 2 3 4\n---\ncat 1 2 3")
    with pytest.raises(ValueError, match="Box set 2: The box list is empty"):
        object_location.parse_box_sets("dog 1 2 3 4\n---\n")


def test_a_loss_with_a_box_set_per_image_scores_each_image_as_it_would_alone():
    detector = object_location.small_random_detector(0)
    sets = object_location.parse_box_sets("dog 0.1 0.1 0.6 0.8\n---\ncat 0.5 0.2 0.9 0.7\nperson 0 0 0.4 0.5")
    image = torch.rand(2, 3, 48, 64)
    batched = object_location.ObjectLocationLoss(detector, sets, seed=3).bind("cpu")(image)
    alone = object_location.ObjectLocationLoss(detector, sets[0], seed=3).bind("cpu")(image[:1])
    torch.testing.assert_close(batched[:1], alone)  # the first image draws the first proposals, as alone
    other = object_location.ObjectLocationLoss(detector, sets[1], seed=3).bind("cpu")(image)
    assert not torch.allclose(batched[1], other[1])  # the second image was scored against its own boxes
    with pytest.raises(ValueError, match="2 box sets for a batch of 3"):
        object_location.ObjectLocationLoss(detector, sets).check(3, 48, 64)


def test_pixel_boxes_outside_the_image_are_rejected():
    loss = object_location.ObjectLocationLoss(object_location.small_random_detector(0), object_location.parse_boxes("dog 10 10 500 300"))
    loss.check(1, 512, 512)
    with pytest.raises(ValueError, match="reaches outside the 256x256 image"):
        loss.check(1, 256, 256)


@pytest.mark.parametrize("batch, height, width", SIZES)
def test_object_location_loss_shapes_gradient_and_frozen_batchnorm(batch, height, width):
    detector = object_location.small_random_detector(0)
    norm = next(m for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running_mean = norm.running_mean.clone()
    loss = object_location.ObjectLocationLoss(detector, object_location.parse_boxes("dog 0.1 0.1 0.6 0.8\ncat 0.5 0.2 0.9 0.7"))
    value, grad = gradient_of(loss.bind("cpu"), torch.rand(batch, 3, height, width))
    assert value.shape == (batch,) and (value > 0).all()
    assert_useful_gradient(grad)
    assert torch.equal(norm.running_mean, running_mean)  # BatchNorm stayed in eval mode
    assert not detector.network.training


def test_object_location_loss_sums_the_reference_terms_and_is_seeded():
    detector = object_location.small_random_detector(0)
    boxes = object_location.parse_boxes("dog 0.1 0.1 0.6 0.8")
    image = torch.rand(1, 3, 48, 64)
    first = [object_location.ObjectLocationLoss(detector, boxes, seed=3).bind("cpu")(image) for _ in range(2)]
    assert torch.equal(first[0], first[1])  # a new run repeats the proposal sampling
    torch.manual_seed(3 * 1_000_003 + 1)
    detector.network.train()
    for m in detector.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    terms = detector.network([image[0]], [{"boxes": boxes.in_pixels(48, 64), "labels": torch.tensor([18])}])
    detector.network.eval()
    torch.testing.assert_close(first[0][0], terms["loss_classifier"] + terms["loss_objectness"] + terms["loss_rpn_box_reg"])


def test_the_detector_is_fasterrcnn_resnet50_fpn_v2_with_91_coco_labels():
    detector = object_location.build_detector()
    assert detector.network.roi_heads.box_predictor.cls_score.out_features == 91 == len(object_location.COCO_CATEGORIES)
    assert detector.network.transform.min_size == (800,)
    assert detector.network.transform.image_mean == list(IMAGENET_MEAN)
    assert detector.network.roi_heads.score_thresh == 0.9
    with pytest.raises(ValueError, match="fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth"):
        object_location.build_detector({"conv.weight": torch.zeros(1)})


# --- classifier -------------------------------------------------------------------------------------------------

def test_classes_are_picked_by_name_or_index():
    assert classifier.class_index("goldfish") == 1 == classifier.class_index(" 1 ")
    assert classifier.class_index("Golden Retriever") == 207
    for bad, message in [("1000", "out of range"), ("-1", "out of range"), ("golden retreiver", "Did you mean 'golden retriever'")]:
        with pytest.raises(ValueError, match=message):
            classifier.class_index(bad)


def test_classifier_preprocessing_follows_its_torchvision_weights():
    model = classifier.build_classifier("mobilenet_v2")
    assert model.preprocessing == classifier.Preprocessing(232, 224, IMAGENET_MEAN, IMAGENET_STD)
    recorder = InputRecorder(lambda x: torch.zeros(x.shape[0], 1000))
    classifier.ImageClassifier(recorder, model.preprocessing)(torch.full((2, 3, 40, 56), 0.5))
    assert recorder.seen.shape == (2, 3, 224, 224)
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(recorder.seen.mean(dim=(0, 2, 3)), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="Did you mean"):
        classifier.build_classifier("mobilenet_v9")


@pytest.mark.parametrize("batch, height, width", SIZES)
def test_classifier_loss_shapes_gradient_and_minimum(batch, height, width):
    bound = classifier.ClassifierLoss(classifier.small_random_classifier(0), 7).bind("cpu")
    value, grad = gradient_of(bound, torch.rand(batch, 3, height, width))
    assert value.shape == (batch,) and (value > 0).all()
    assert_useful_gradient(grad)
    sure = classifier.ImageClassifier(InputRecorder(lambda x: 40 * torch.nn.functional.one_hot(torch.full((x.shape[0],), 7), 1000).float()))
    assert (classifier.ClassifierLoss(sure, 7).bind("cpu")(torch.rand(batch, 3, height, width)) < 1e-6).all()
    assert (classifier.ClassifierLoss(sure, 8).bind("cpu")(torch.rand(batch, 3, height, width)) > 10).all()


def test_a_classifier_loss_with_a_class_per_image_scores_each_image_as_it_would_alone():
    network = classifier.small_random_classifier(0)
    image = torch.rand(3, 3, 40, 56)
    batched = classifier.ClassifierLoss(network, [7, 8, 9]).bind("cpu")(image)
    for i, index in enumerate((7, 8, 9)):
        torch.testing.assert_close(batched[i:i + 1], classifier.ClassifierLoss(network, index).bind("cpu")(image[i:i + 1]))
    with pytest.raises(ValueError, match="3 target classes for a batch of 2"):
        classifier.ClassifierLoss(network, [7, 8, 9]).check(2, 40, 56)


# --- CLIP image: style (paper) / content (SDG), and Gram style (SDG) ----------------------------------------------

def tiny_resnet_clip():
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=open_clip.CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=64),
                           text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    model.visual.preprocess_cfg = {"size": 64, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("batch, height, width", SIZES)
def test_clip_image_loss_is_minus_100_at_the_reference(batch, height, width):
    model = small_random_clip(0, 32, 32)
    reference = torch.rand(1, 3, height, width)
    bound = CLIPSimilarityLoss(model, encode_image(model, reference), "reference images").bind("cpu")
    assert torch.allclose(bound(reference.expand(batch, -1, -1, -1)), torch.full((batch,), -LOGIT_SCALE), atol=1e-3)
    value, grad = gradient_of(bound, torch.rand(batch, 3, height, width))
    assert (value > -LOGIT_SCALE).all()
    assert_useful_gradient(grad)


def test_gram_matrices():
    maps = torch.randn(2, 3, 4, 5)
    flat = maps.flatten(2)
    torch.testing.assert_close(clip_gram_style.gram(maps), flat @ flat.transpose(1, 2) / 60)
    tokens = torch.randn(2, 7, 3)  # (B, N, D)
    torch.testing.assert_close(clip_gram_style.gram(tokens), tokens.transpose(1, 2) @ tokens / 21)
    torch.testing.assert_close(clip_gram_style.gram(tokens.transpose(0, 1), tokens_first=True), clip_gram_style.gram(tokens))


@pytest.mark.parametrize("model_builder", [lambda: small_random_clip(0, 32, 32), tiny_resnet_clip], ids=["vit", "resnet"])
@pytest.mark.parametrize("batch, height, width", SIZES)
def test_gram_style_loss_is_zero_at_the_style_image(model_builder, batch, height, width):
    model = model_builder()
    style = torch.rand(1, 3, height, width)
    with torch.no_grad():
        grams = clip_gram_style.style_grams(model, style)
    assert len(grams) == 2
    bound = clip_gram_style.CLIPGramStyleLoss(model, grams).bind("cpu")
    assert torch.allclose(bound(style.expand(batch, -1, -1, -1)), torch.zeros(batch), atol=1e-5)
    value, grad = gradient_of(bound, torch.rand(batch, 3, height, width) * 0.5)
    assert (value > 0).all()
    assert_useful_gradient(grad)
    assert all(not layer._forward_hooks for layer in clip_gram_style.feature_layers(model))  # the shared model is left clean
