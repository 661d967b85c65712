"""Face identity guidance (paper §4.2): ℓ1 between face-recognition embeddings of the generated and a reference face.

As in the reference (ugd-reference.md §2.1): the image is resized to 256 px, MTCNN finds the largest face
without gradients (its box is an oracle), the box is cut out and resized to 160 px with bicubic
interpolation, standardised as (255·x − 127.5)/128, and embedded by InceptionResnetV1 (vggface2). The
reference skips the whole batch when one sample has no face; here only that sample goes unguided.
"""
from __future__ import annotations

import logging

import torch

from .images import check_batch, image_to_bchw, resize_short_side
from .weights import load_strictly

log = logging.getLogger(__name__)

DETECTION_SIZE = 256
FACE_SIZE = 160
VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"


def _facenet():
    try:
        import facenet_pytorch
    except ImportError as error:
        raise RuntimeError("Face guidance needs facenet-pytorch: install it with "
                           "pip install \"facenet-pytorch>=2.5.3,<2.6\" (2.6 would replace your torch).") from error
    return facenet_pytorch


class MTCNNDetector(torch.nn.Module):
    """facenet-pytorch's MTCNN (weights ship with the package), giving the largest face's box per image."""

    def __init__(self):
        super().__init__()
        self.mtcnn = _facenet().MTCNN(select_largest=True)

    @torch.no_grad()
    def detect(self, pixels: torch.Tensor) -> list[tuple[float, float, float, float] | None]:
        """Largest face box (x0, y0, x1, y1) of each image in (B, H, W, 3) with values in [0, 255], or None."""
        self.mtcnn.device = next(self.mtcnn.parameters()).device  # MTCNN keeps its own device field
        boxes, _ = self.mtcnn.detect(pixels.to(self.mtcnn.device, torch.float32))
        return [None if found is None else tuple(float(v) for v in found[0]) for found in boxes]


class CentreBoxDetector(torch.nn.Module):
    """Finds a "face" in the middle 60% of every image: a stand-in detector for testing a workflow's wiring."""

    @torch.no_grad()
    def detect(self, pixels: torch.Tensor) -> list[tuple[float, float, float, float] | None]:
        h, w = pixels.shape[1:3]
        return [(0.2 * w, 0.2 * h, 0.8 * w, 0.8 * h)] * pixels.shape[0]


class FaceNetworks(torch.nn.Module):
    """A face detector and an identity embedder: (B, 3, H, W) in [0, 1] to unit embeddings, or None without a face."""

    def __init__(self, detector: torch.nn.Module, embedder: torch.nn.Module):
        super().__init__()
        self.detector, self.embedder = detector, embedder

    def crops(self, image: torch.Tensor) -> list[torch.Tensor | None]:
        """The standardised (3, 160, 160) face crop of each image, differentiable in the image; None without a face."""
        small = resize_short_side(image, DETECTION_SIZE, interpolation="bicubic")
        h, w = small.shape[-2:]
        boxes = self.detector.detect(small.detach().movedim(1, -1) * 255)
        faces = []
        for picture, box in zip(small, boxes):
            if box is None:
                faces.append(None)
                continue
            x0, y0 = int(max(box[0], 0)), int(max(box[1], 0))
            x1, y1 = int(min(box[2], w)), int(min(box[3], h))
            if x1 - x0 < 2 or y1 - y0 < 2:
                faces.append(None)
                continue
            face = torch.nn.functional.interpolate(picture[None, :, y0:y1, x0:x1], size=(FACE_SIZE, FACE_SIZE), mode="bicubic")
            faces.append((face[0] * 255 - 127.5) / 128)
        return faces

    def embed(self, image: torch.Tensor) -> list[torch.Tensor | None]:
        """The (D,) identity embedding of each image's face, or None where no face is found."""
        faces = self.crops(image)
        found = [i for i, face in enumerate(faces) if face is not None]
        embeddings: list[torch.Tensor | None] = [None] * len(faces)
        if found:
            for i, embedding in zip(found, self.embedder(torch.stack([faces[i] for i in found]))):
                embeddings[i] = embedding
        return embeddings


def build_face_networks(state_dict: dict | None = None) -> FaceNetworks:
    """MTCNN and InceptionResnetV1 in eval mode; `state_dict` holds the InceptionResnetV1 weights (vggface2)."""
    embedder = _facenet().InceptionResnetV1(pretrained=None, classify=False)
    if state_dict is not None:
        # The vggface2 file also holds the training classifier over its 8631 identities, which embedding does not use.
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("logits.")}
        load_strictly(embedder, state_dict, "facenet-pytorch's InceptionResnetV1", "Use 20180402-114759-vggface2.pt.")
    return FaceNetworks(MTCNNDetector(), embedder).eval().requires_grad_(False)


class TinyFaceEmbedder(torch.nn.Module):
    """Two strided convolutions to a unit 64-d embedding."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 5, stride=4), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(128, 64))

    def forward(self, faces):
        return torch.nn.functional.normalize(self.layers(faces), dim=1)


def small_random_face_networks(seed: int = 0) -> FaceNetworks:
    """A centre-box detector and a tiny random embedder, for stand-ins and tests."""
    torch.manual_seed(seed)
    return FaceNetworks(CentreBoxDetector(), TinyFaceEmbedder()).eval().requires_grad_(False)


def reference_embeddings(networks: FaceNetworks, reference: torch.Tensor) -> torch.Tensor:
    """(N, D) embeddings of the faces in a ComfyUI IMAGE (N, H, W, 3); ValueError if one has no face."""
    with torch.no_grad():
        device = next(networks.parameters()).device
        embeddings = networks.embed(image_to_bchw(reference).to(device, torch.float32))
    missing = [i for i, e in enumerate(embeddings) if e is None]
    if missing:
        raise ValueError(f"No face was found in reference image {missing[0] + 1} of {len(embeddings)}: use a photo where "
                         f"the face is clearly visible and at least about 20 px tall at 256 px.")
    return torch.stack(embeddings).float()


class FaceIdentityLoss:
    """ℓ = mean |embedding(face in x) − embedding(reference face)|; a sample with no face found gets no guidance."""

    def __init__(self, networks: FaceNetworks, target: torch.Tensor):
        self.networks, self.target = networks, target

    def check(self, batch: int, height: int, width: int) -> None:
        check_batch(self.target.shape[0], "reference faces", batch)

    def bind(self, device: torch.device):
        networks = self.networks
        network_device = next(networks.parameters()).device
        target = self.target.to(network_device).clone()
        warned = []

        def loss(image: torch.Tensor) -> torch.Tensor:
            embeddings = networks.embed(image.to(network_device, torch.float32))
            values = []
            for i, embedding in enumerate(embeddings):
                if embedding is None:
                    if not warned:
                        log.warning("Face identity guidance: no face found in a sample at this step, so that sample is "
                                    "not guided there (this is said once per run).")
                        warned.append(True)
                    values.append(image[i].sum() * 0)  # no gradient, but keeps the sample in the graph
                else:
                    values.append((embedding - target[i % target.shape[0]]).abs().mean().to(image.device))
            return torch.stack(values)

        return loss
