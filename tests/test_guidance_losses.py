"""The guidance losses on their own: shapes, gradients, invariants, preprocessing and bad input."""
from __future__ import annotations

import open_clip
import pytest
import torch

from guidance.clip_similarity import LOGIT_SCALE, CLIPSimilarityLoss, build_clip_model, clip_preprocess, encode_text, negative_cosine, small_random_clip
from guidance.reconstruction import ReconstructionLoss, masked_mse


def tiny_clip():
    return small_random_clip(seed=0, width=32, image_size=32)


# --- reconstruction ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 2])
def test_reconstruction_loss_is_zero_at_the_reference_and_positive_elsewhere(batch):
    reference = torch.rand(batch, 24, 40, 3)  # ComfyUI IMAGE, not square
    loss = ReconstructionLoss(reference).bind("cpu")
    exact = reference.movedim(-1, 1)
    assert loss(exact).shape == (batch,)
    assert torch.allclose(loss(exact), torch.zeros(batch), atol=1e-7)
    assert (loss(exact.flip(-1)) > 0).all()


def test_reconstruction_ignores_the_masked_region():
    reference = torch.rand(1, 16, 16, 3)
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 8:] = 1.0  # right half is to be generated
    loss = ReconstructionLoss(reference, mask).bind("cpu")
    image = reference.movedim(-1, 1).clone()
    image[..., 8:] = 1 - image[..., 8:]
    assert float(loss(image)) == pytest.approx(0.0, abs=1e-7)
    image[..., :8] += 0.5
    assert float(loss(image)) == pytest.approx(0.25, rel=1e-5)  # mean over the known half only


def test_reconstruction_broadcasts_and_resizes_the_reference():
    loss = ReconstructionLoss(torch.full((1, 8, 12, 3), 0.5)).bind("cpu")
    image = torch.full((2, 3, 16, 24), 0.5, requires_grad=True)
    value = loss(image)
    assert value.shape == (2,) and torch.allclose(value, torch.zeros(2), atol=1e-6)
    (grad,) = torch.autograd.grad(loss(image + 0.1).sum(), image)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_masked_mse_value():
    image, reference = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    known = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert float(masked_mse(image, reference, known)) == pytest.approx(1.0)


@pytest.mark.parametrize("reference, mask, message", [
    (torch.rand(3, 16, 16, 3), None, "batch of 3"),
    (torch.rand(1, 16, 32, 3), None, "cannot be resized"),
    (torch.rand(1, 16, 16, 3), torch.zeros(1, 10, 30), "the mask is 30x10"),
])
def test_reconstruction_rejects_inputs_that_do_not_fit(reference, mask, message):
    with pytest.raises(ValueError, match=message):
        ReconstructionLoss(reference, mask).check(2, 64, 64)


def test_reconstruction_rejects_a_mask_that_hides_everything():
    with pytest.raises(ValueError, match="covers the whole image"):
        ReconstructionLoss(torch.rand(1, 8, 8, 3), torch.ones(1, 8, 8))


# --- CLIP text --------------------------------------------------------------------------------------------------

def test_clip_preprocess_crops_to_a_square_resizes_and_normalises():
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    image = torch.zeros(2, 3, 30, 50)
    image[..., 10:40] = 1.0  # the centre square is white, the sides black
    out = clip_preprocess(image, 24, mean, std)
    assert out.shape == (2, 3, 24, 24)
    white = (1 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(out[0, :, 12, 12], white, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), white, rtol=1e-3, atol=1e-3)


def test_negative_cosine_is_minus_one_for_parallel_embeddings():
    a = torch.randn(3, 8)
    assert torch.allclose(negative_cosine(a, 2 * a), -torch.ones(3), atol=1e-6)
    assert torch.allclose(negative_cosine(a, -a), torch.ones(3), atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2])
def test_clip_text_loss_shapes_and_gradient(batch):
    model = tiny_clip()
    text = encode_text(model, "RN50", "a photo of a cat")
    assert text.shape == (1, 32)
    loss = CLIPSimilarityLoss(model, text).bind("cpu")
    image = torch.rand(batch, 3, 40, 56, requires_grad=True)
    value = loss(image)
    assert value.shape == (batch,) and ((value >= -LOGIT_SCALE) & (value <= LOGIT_SCALE)).all()
    (grad,) = torch.autograd.grad(value.sum(), image)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_clip_text_loss_reaches_its_minimum_when_the_embeddings_match():
    model = tiny_clip()
    image = torch.rand(1, 3, 32, 32)
    embedding = model.encode_image(clip_preprocess(image, 32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD))
    assert float(CLIPSimilarityLoss(model, embedding).bind("cpu")(image)) == pytest.approx(-LOGIT_SCALE, abs=1e-3)


def test_clip_text_loss_rejects_a_batch_of_prompts_that_does_not_fit():
    with pytest.raises(ValueError, match="3 text embeddings cannot guide 2 samples: give 1 or 2"):
        CLIPSimilarityLoss(tiny_clip(), torch.randn(3, 32)).check(2, 64, 64)


def test_build_clip_model_rejects_unknown_architectures_and_mismatched_weights():
    with pytest.raises(ValueError, match="Unknown open_clip architecture"):
        build_clip_model("NoSuchNet")
    with pytest.raises(ValueError, match="do not fit open_clip 'RN50'"):
        build_clip_model("RN50", tiny_clip().state_dict())


class _FixedDetections(torch.nn.Module):
    """A detector network that finds the same boxes in every image, above the score threshold it is given."""

    def __init__(self, found):
        super().__init__()
        self.found, self.scale = found, torch.nn.Parameter(torch.ones(()))
        self.roi_heads = type("Heads", (), {"score_thresh": 0.9})()

    def forward(self, images):
        assert not self.training
        keep = self.found["scores"] >= self.roi_heads.score_thresh
        return [{name: value[keep] for name, value in self.found.items()} for _ in images]


def test_the_detected_boxes_reward_is_the_best_overlap_times_confidence_per_target_box():
    from guidance.object_location import COCO_CATEGORIES, DetectedBoxesLoss, Detector, parse_boxes

    dog, person = COCO_CATEGORIES.index("dog"), COCO_CATEGORIES.index("person")
    found = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 5.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
             "labels": torch.tensor([dog, dog, person]), "scores": torch.tensor([0.5, 0.9, 0.2])}
    detector = Detector(_FixedDetections(found))
    boxes = parse_boxes("dog 0 0 10 10\ncat 0 0 10 10", units="pixels")
    reward = DetectedBoxesLoss(detector, boxes).bind("cpu")(torch.rand(2, 3, 32, 32))
    # dog: max(1.0 × 0.5, 0.5 × 0.9) = 0.5; no cat found: 0; the low-scoring person is seen (threshold 0.05)
    assert torch.allclose(reward, torch.tensor([-0.25, -0.25]))
    assert detector.network.roi_heads.score_thresh == 0.9  # the detector's own threshold is back
    person_boxes = parse_boxes("person 20 20 30 30", units="pixels")
    assert torch.allclose(DetectedBoxesLoss(detector, person_boxes).bind("cpu")(torch.rand(1, 3, 32, 32)),
                          torch.tensor([-0.2]))
