"""Face restoration, as A1111's GFPGAN and CodeFormer: find the faces, align each to the FFHQ 512 template by
its 5 landmarks, restore it with the network, and paste it back through the inverse transform with a
feathered mask, so that nothing outside the faces changes.

Weights sit in A1111's folders under their A1111 names (GFPGAN/GFPGANv1.4.pth, Codeformer/codeformer-v0.1.0.pth;
another weight file of the restorer's name in that folder does too) and are loaded with spandrel (CodeFormer
with spandrel_extra_arches). Faces are found by OpenCV's YuNet detector (cv2.FaceDetectorYN, the same 5
landmarks as RetinaFace's) from FaceDetection/face_detection_yunet_2023mar.onnx: A1111's detector, facexlib's
RetinaFace, builds its backbone with torchvision. A file that is missing is named in the error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from schemas import GenerationRequest, Options, RequestError

from ..faults import reraise_server_fault
from ..imaging.image_ops import opencv
from ..store.models_dir import describe_error, list_files
from .upscalers import WEIGHT_SUFFIXES, load_descriptor

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

FACE_SIZE = 512
# where the 5 landmarks (eye, eye, nose, mouth corner, mouth corner; left to right in the image) of an aligned
# face lie in FFHQ's 512 x 512 crops, the template GFPGAN and CodeFormer were trained on
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)
ALIGN_BORDER = (132, 133, 135)  # RGB filling an aligned crop beyond the image, as facexlib's
DETECTOR_FILE = "FaceDetection/face_detection_yunet_2023mar.onnx"
SCORE_THRESHOLD = 0.8  # detections scoring less are not faces
NMS_THRESHOLD = 0.3
MIN_EYE_DISTANCE = 5  # pixels; smaller faces are left alone (A1111's eye_dist_threshold)


@dataclass(frozen=True)
class RestorerKind:
    folder: str  # A1111's folder under the models directory
    file: str  # A1111's download name, preferred when the folder has several
    architecture: str  # spandrel's architecture id
    run: Callable[[Any, torch.Tensor, float], torch.Tensor]  # (network, faces in [-1, 1], CodeFormer weight)


# A1111's face_restoration_model names, in A1111's order (the option's null takes the first whose weights are
# present). GFPGAN's StyleGAN decoder runs on its stored noise (A1111 draws fresh noise each time), so a result is
# reproducible.
RESTORERS = {
    "CodeFormer": RestorerKind("Codeformer", "codeformer-v0.1.0.pth", "CodeFormer",
                               lambda net, faces, weight: net(faces, weight=weight)[0]),
    "GFPGAN": RestorerKind("GFPGAN", "GFPGANv1.4.pth", "GFPGAN",
                           lambda net, faces, weight: net(faces, return_rgb=False, randomize_noise=False)[0]),
}


def restores_faces(request: GenerationRequest, options: Options) -> bool:
    """Whether a txt2img/img2img request restores faces: restore_faces, unset: the face_restoration option. The
    face_restoration_model option names the restorer."""
    return request.restore_faces if request.restore_faces is not None else options.face_restoration


# ---------------------------------------------------------------- the pipeline, on numpy RGB images

def detect_faces(detector: Any, image: np.ndarray) -> list[np.ndarray]:
    """The 5 landmarks (5 x 2, in FFHQ_TEMPLATE's order) of each face a cv2.FaceDetectorYN finds in an RGB
    image, faces with eyes closer than MIN_EYE_DISTANCE left out."""
    height, width = image.shape[:2]
    detector.setInputSize((width, height))
    _, found = detector.detect(np.ascontiguousarray(image[:, :, ::-1]))  # YuNet reads BGR
    faces = []
    for row in found if found is not None else []:
        points = row[4:14].reshape(5, 2)
        eyes, nose, mouth = points[:2], points[2:3], points[3:]  # each pair ordered left to right
        landmarks = np.concatenate([eyes[np.argsort(eyes[:, 0])], nose, mouth[np.argsort(mouth[:, 0])]])
        if np.linalg.norm(landmarks[1] - landmarks[0]) >= MIN_EYE_DISTANCE:
            faces.append(landmarks.astype(np.float32))
    return faces


def align_face(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(the FACE_SIZE crop of the face, the 2 x 3 affine from the image to it): the similarity transform
    that best maps the landmarks onto FFHQ_TEMPLATE. None where no transform fits."""
    cv2 = opencv()
    affine, _ = cv2.estimateAffinePartial2D(landmarks, FFHQ_TEMPLATE, method=cv2.LMEDS)
    if affine is None:
        return None
    crop = cv2.warpAffine(image, affine, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=ALIGN_BORDER)
    return crop, affine


def paste_face(image: np.ndarray, face: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """`image` (float32) with the restored `face` warped back into place: its square, shrunk and feathered by
    a twentieth of the face's size, blended over the image; outside that square the image stays as it is."""
    cv2 = opencv()
    height, width = image.shape[:2]
    inverse = cv2.invertAffineTransform(affine)
    warped = cv2.warpAffine(face.astype(np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones(face.shape[:2], np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))  # the interpolated rim
    edge = int(np.sqrt(mask.sum())) // 20
    if edge:
        mask = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
        mask = cv2.GaussianBlur(mask, (2 * edge + 1, 2 * edge + 1), 0)
    mask = mask[:, :, None]
    return mask * warped + (1 - mask) * image


def restore_faces(image: Image.Image, faces: list[np.ndarray], restore: Callable[[np.ndarray], np.ndarray]
                  ) -> Image.Image:
    """`image` with each face (its landmarks) aligned, restored by `restore` (FACE_SIZE RGB uint8 in and
    out) and pasted back."""
    pixels = np.asarray(image.convert("RGB"))
    result = pixels.astype(np.float32)
    for landmarks in faces:
        aligned = align_face(pixels, landmarks)
        if aligned is not None:
            crop, affine = aligned
            result = paste_face(result, restore(crop), affine)
    return Image.fromarray(np.clip(np.rint(result), 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- restorers from the models directory

@dataclass(frozen=True)
class FaceRestorer:
    """A loaded restorer: image -> image with its faces restored. `weight`: CodeFormer's (0 = the most
    restoration, 1 = the least); GFPGAN has none."""

    name: str
    network: ImageModelDescriptor
    detector: Any
    weight: float = 0.5

    def with_weight(self, weight: float) -> FaceRestorer:
        return dataclasses.replace(self, weight=weight)

    def __call__(self, image: Image.Image) -> Image.Image:
        return restore_faces(image, detect_faces(self.detector, np.asarray(image.convert("RGB"))), self.restore)

    def restore(self, face: np.ndarray) -> np.ndarray:
        """One aligned face, FACE_SIZE RGB uint8 in and out; the network sees it in [-1, 1]."""
        network = self.network
        pixels = torch.from_numpy(face).permute(2, 0, 1)[None].to(network.device, network.dtype) / 127.5 - 1
        with torch.inference_mode():
            output = RESTORERS[self.name].run(network.model, pixels, self.weight)
        output = ((output[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return output.permute(1, 2, 0).cpu().numpy()


class FaceRestorers:
    """The face restorers a worker offers; the detector and each network are loaded on first use and kept."""

    def __init__(self, models_dir: Path, device: torch.device):
        self.models_dir, self.device = models_dir, device
        self._detector: Any = None
        self._networks: dict[Path, ImageModelDescriptor] = {}

    def weights(self, name: str) -> Path | None:
        """The restorer's weight file: A1111's file name, else another in its folder named like the restorer."""
        kind = RESTORERS[name]
        files = [path for path in list_files(self.models_dir, kind.folder, WEIGHT_SUFFIXES)
                 if name.lower() in path.name.lower()]
        return next((path for path in files if path.name == kind.file), files[0] if files else None)

    def listing(self) -> list[dict[str, Any]]:
        """Items of A1111's /sdapi/v1/face-restorers: the restorers whose weights are here."""
        return [{"name": name, "cmd_dir": str(path.parent)} for name in RESTORERS
                if (path := self.weights(name)) is not None]

    def find(self, name: str | None, field: str) -> FaceRestorer:
        """The restorer called `name` (a RESTORERS key; None: the first whose weights are here, in A1111's order),
        loaded; a missing file is named in the error."""
        name = name or next((restorer for restorer in RESTORERS if self.weights(restorer)), None)
        path = self.weights(name) if name else None
        missing = [] if path else [" or ".join(f"{kind.folder}/{kind.file}" for restorer, kind in RESTORERS.items()
                                               if name in (None, restorer))]
        if not (self.models_dir / DETECTOR_FILE).is_file():
            missing.append(DETECTOR_FILE)
        if missing:
            raise RequestError(field, f"face restoration{f' with {name}' if name else ''} needs "
                                      f"{' and '.join(missing)} in the models directory ({self.models_dir}), which has "
                                      "no such file")
        if path not in self._networks:
            self._networks[path] = _load_network(path, name, field, self.device)
        return FaceRestorer(name, self._networks[path], self._load_detector(field))

    def _load_detector(self, field: str) -> Any:
        if self._detector is None:
            path = self.models_dir / DETECTOR_FILE
            try:
                self._detector = opencv().FaceDetectorYN.create(str(path), "", (FACE_SIZE, FACE_SIZE),
                                                                      SCORE_THRESHOLD, NMS_THRESHOLD)
            except Exception as error:  # cv2.error for a file OpenCV can't read as a YuNet model
                reraise_server_fault(error)
                raise RequestError(field, f"the face detector {DETECTOR_FILE} can't be loaded: "
                                          f"{describe_error(error)}") from None
        return self._detector

    def unload(self) -> None:
        self._networks.clear()
        self._detector = None


def _load_network(path: Path, name: str, field: str, device: torch.device) -> ImageModelDescriptor:
    """The file through spandrel with its extra architectures (CodeFormer), checked to be `name`'s network.
    In float32: neither network supports half precision."""
    descriptor = load_descriptor(path, f"face restorer {name!r}", field, device, extra_architectures=True)
    if descriptor.architecture.id != RESTORERS[name].architecture:
        raise RequestError(field, f"face restorer {name!r} ({path.name}) is a {descriptor.architecture.name} "
                                  f"model, not {name}")
    return descriptor.to(torch.float32).eval()
