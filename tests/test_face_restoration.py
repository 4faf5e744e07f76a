"""Face restoration: detection, alignment and paste-back on their own, then GFPGAN and CodeFormer (random
weights, real networks) through extras, txt2img and img2img, and the errors that name a missing file."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from engine.store.bake import read_manifest
from engine.postprocess.face_restoration import (DETECTOR_FILE, FACE_SIZE, FFHQ_TEMPLATE, RESTORERS, FaceRestorers,
                                                 align_face, detect_faces, restore_faces)
from engine.tiny.faces import CELL, face_landmarks, write_detector, write_restorers
from handler.router import route
from handler.worker import make_handler
from schemas import Options, RequestError

CPU = torch.device("cpu")
FACE_CELL = (2, 1)  # (row, column) of the red cell the test images mark a face with


@pytest.fixture(scope="session")
def restorer_files(tmp_path_factory) -> Path:
    """The random-weight GFPGAN and CodeFormer files, written once per session."""
    directory = tmp_path_factory.mktemp("restorers")
    write_restorers(directory)
    return directory


def _models_dir(directory: Path, restorer_files: Path, every_cell: bool = False) -> Path:
    shutil.copytree(restorer_files, directory, copy_function=os.link, dirs_exist_ok=True)
    write_detector(directory / DETECTOR_FILE, every_cell)
    return directory


@pytest.fixture(scope="module")
def face_models_dir(tmp_path_factory, restorer_files, tiny_checkpoint_path) -> Path:
    """tiny-sd15, the restorers and the red-cell detector."""
    directory = _models_dir(tmp_path_factory.mktemp("face-models"), restorer_files)
    (directory / "Stable-diffusion").mkdir()
    shutil.copyfile(tiny_checkpoint_path, directory / "Stable-diffusion" / tiny_checkpoint_path.name)
    return directory


@pytest.fixture(scope="module")
def face_engine(face_models_dir):
    from engine.runtime import Engine

    return Engine.start(models_dir=face_models_dir, device="cpu", dtype="float32")


def picture(width: int = 160, height: int = 128, red_cells=(FACE_CELL,)) -> Image.Image:
    """Seeded noise (no pure red anywhere) with the given 32 x 32 cells painted pure red."""
    pixels = np.random.default_rng(7).integers(0, 200, (height, width, 3), dtype=np.uint8)
    for row, column in red_cells:
        pixels[row * CELL:(row + 1) * CELL, column * CELL:(column + 1) * CELL] = (255, 0, 0)
    return Image.fromarray(pixels, "RGB")


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def opened(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")).astype(int)


def face_square(landmarks: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """A boolean mask of the pixels the aligned crop of that face covers (1 pixel of margin)."""
    import cv2

    _, affine = align_face(np.zeros((image_size[1], image_size[0], 3), np.uint8), landmarks)
    covered = cv2.warpAffine(np.ones((FACE_SIZE, FACE_SIZE), np.float32), cv2.invertAffineTransform(affine),
                             image_size, flags=cv2.INTER_LINEAR)
    return cv2.dilate((covered > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def assert_only_the_face_changed(before: np.ndarray, after: np.ndarray, landmarks: np.ndarray) -> None:
    square = face_square(landmarks, (before.shape[1], before.shape[0]))
    changed = np.any(before != after, axis=2)
    assert changed.any() and not (changed & ~square).any()
    centre = tuple(np.round(landmarks.mean(axis=0)).astype(int)[::-1])
    assert changed[centre]


# ---------------------------------------------------------------- the pipeline's parts

def test_the_detector_reports_each_face_with_its_landmarks_left_to_right(face_models_dir):
    detector = FaceRestorers(face_models_dir, CPU)._load_detector("test")
    faces = detect_faces(detector, np.asarray(picture(red_cells=[(0, 3), (2, 1)])))
    expected = [face_landmarks(0, 3), face_landmarks(2, 1)]
    assert len(faces) == 2
    for face, wanted in zip(sorted(faces, key=lambda f: f[0, 1]), expected):
        np.testing.assert_allclose(face, wanted, atol=1e-3)
    assert detect_faces(detector, np.asarray(picture(red_cells=[]))) == []


def test_alignment_maps_the_landmarks_onto_the_ffhq_template():
    angle, scale, offset = np.deg2rad(12), 0.25, np.array([40.0, 30.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (FFHQ_TEMPLATE @ rotation.T + offset).astype(np.float32)
    image = np.zeros((200, 200, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), colour in zip(np.round(landmarks).astype(int), colours):
        image[y - 1:y + 2, x - 1:x + 2] = colour  # a dot at each landmark
    crop, affine = align_face(image, landmarks)
    assert crop.shape == (FACE_SIZE, FACE_SIZE, 3)
    np.testing.assert_allclose(landmarks @ affine[:, :2].T + affine[:, 2], FFHQ_TEMPLATE, atol=0.05)
    for (x, y), colour in zip(np.round(FFHQ_TEMPLATE).astype(int), colours):
        assert tuple(crop[y, x]) == colour  # the crop shows the dot where the template puts that landmark


def test_paste_back_changes_only_the_face_and_puts_the_restored_face_in_place():
    image = picture(red_cells=[])
    before = np.asarray(image).astype(int)
    landmarks = face_landmarks(*FACE_CELL)
    inverted = np.asarray(restore_faces(image, [landmarks], lambda face: 255 - face)).astype(int)
    assert_only_the_face_changed(before, inverted, landmarks)
    centre = np.round(landmarks.mean(axis=0)).astype(int)
    core = (slice(centre[1] - 4, centre[1] + 5), slice(centre[0] - 4, centre[0] + 5))
    assert np.abs(inverted[core] - (255 - before[core])).mean() < 40  # the inverted face, resampled twice
    unchanged = np.asarray(restore_faces(image, [landmarks], lambda face: face)).astype(int)
    assert np.abs(unchanged - before)[core].mean() < 40 and not (unchanged != before)[~face_square(
        landmarks, image.size)].any()


def test_restore_faces_without_faces_returns_the_image():
    image = picture()
    assert np.array_equal(np.asarray(restore_faces(image, [], lambda face: 255 - face)), np.asarray(image))


# ---------------------------------------------------------------- extras with the real networks

@pytest.fixture(scope="module")
def gfpgan_full(face_engine):
    return route(face_engine, "POST", "extra-single-image", {"image": b64(picture()), "gfpgan_visibility": 1})


def test_gfpgan_restores_only_the_face(face_engine, gfpgan_full):
    assert gfpgan_full["html_info"] == "<p>GFPGAN visibility: 1</p>"
    assert_only_the_face_changed(np.asarray(picture()).astype(int), opened(gfpgan_full["image"]),
                                 face_landmarks(*FACE_CELL))
    again = route(face_engine, "POST", "extra-single-image", {"image": b64(picture()), "gfpgan_visibility": 1})
    assert again["image"] == gfpgan_full["image"]  # deterministic


def test_visibility_below_1_blends_the_restored_image_over_the_original(face_engine, gfpgan_full):
    output = route(face_engine, "POST", "extra-single-image", {"image": b64(picture()), "gfpgan_visibility": 0.4})
    full = Image.fromarray(opened(gfpgan_full["image"]).astype(np.uint8), "RGB")
    assert np.array_equal(opened(output["image"]), np.asarray(Image.blend(picture(), full, 0.4)).astype(int))
    assert output["html_info"] == "<p>GFPGAN visibility: 0.4</p>"


def test_codeformer_restores_only_the_face_and_its_weight_counts(face_engine):
    def run(weight):
        return route(face_engine, "POST", "extra-single-image",
                     {"image": b64(picture()), "codeformer_visibility": 1, "codeformer_weight": weight})

    output = run(0.25)
    assert output["html_info"] == "<p>CodeFormer visibility: 1, CodeFormer weight: 0.25</p>"
    restored = opened(output["image"])
    assert_only_the_face_changed(np.asarray(picture()).astype(int), restored, face_landmarks(*FACE_CELL))
    assert not np.array_equal(opened(run(1)["image"]), restored)


def test_postprocessing_keys_follow_a1111s_order(face_engine):
    output = route(face_engine, "POST", "extra-single-image", {
        "image": b64(picture(64, 64, red_cells=[])), "upscaler_1": "Nearest", "gfpgan_visibility": 0.5,
        "codeformer_visibility": 0.25, "codeformer_weight": 0.123456})
    assert output["html_info"] == ("<p>Postprocess upscale by: 2, Postprocess upscaler: Nearest, GFPGAN visibility: "
                                   "0.5, CodeFormer visibility: 0.25, CodeFormer weight: 0.123</p>")


def test_the_listing_shows_the_restorers_whose_weights_are_there(face_engine, engine):
    assert [item["name"] for item in route(face_engine, "GET", "face-restorers", {})] == ["CodeFormer", "GFPGAN"]
    assert route(engine, "GET", "face-restorers", {}) == []


# ---------------------------------------------------------------- missing files

@pytest.mark.parametrize("present, missing", [
    ([], "GFPGAN/GFPGANv1.4.pth and FaceDetection/face_detection_yunet_2023mar.onnx"),
    (["detector"], "GFPGAN/GFPGANv1.4.pth in"),
    (["restorers"], "FaceDetection/face_detection_yunet_2023mar.onnx in"),
])
def test_a_missing_file_is_named(tmp_path, restorer_files, present, missing):
    if "restorers" in present:
        shutil.copytree(restorer_files, tmp_path, copy_function=os.link, dirs_exist_ok=True)
    if "detector" in present:
        write_detector(tmp_path / DETECTOR_FILE)
    with pytest.raises(RequestError) as raised:
        FaceRestorers(tmp_path, CPU).find("GFPGAN", "gfpgan_visibility")
    assert str(raised.value).startswith(f"gfpgan_visibility: face restoration with GFPGAN needs {missing}")


@pytest.mark.parametrize("field", ["gfpgan_visibility", "codeformer_visibility"])
def test_extras_without_the_files_fail_naming_them(upscaler_engine, field):
    output = make_handler(upscaler_engine)({"input": {"image": b64(picture()), field: 0.5}})
    name, file = ("GFPGAN", "GFPGAN/GFPGANv1.4.pth") if field.startswith("gfpgan") else \
        ("CodeFormer", "Codeformer/codeformer-v0.1.0.pth")
    assert list(output) == ["error"]
    assert output["error"].startswith(f"{field}: face restoration with {name} needs {file} and {DETECTOR_FILE} in the "
                                      "models directory")


def test_restore_faces_without_the_files_fails_before_generating(engine):
    output = make_handler(engine)({"input": {"prompt": "a cat", "restore_faces": True, "steps": 1}})
    assert output["error"].startswith("restore_faces: face restoration needs Codeformer/codeformer-v0.1.0.pth or "
                                      f"GFPGAN/GFPGANv1.4.pth and {DETECTOR_FILE} in the models directory")
    named = make_handler(engine)({"input": {"prompt": "a cat", "restore_faces": True, "steps": 1,
                                            "override_settings": {"face_restoration_model": "GFPGAN"}}})
    assert named["error"].startswith("restore_faces: face restoration with GFPGAN needs GFPGAN/GFPGANv1.4.pth and ")


def _link_restorers(directory: Path, restorer_files: Path, relative_paths: list[str]) -> None:
    for relative in relative_paths:
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        os.link(restorer_files / relative, directory / relative)


@pytest.mark.parametrize("present, default", [(["GFPGAN"], "GFPGAN"), (["GFPGAN", "CodeFormer"], "CodeFormer")])
def test_without_the_option_the_first_restorer_present_in_a1111s_order_is_used(tmp_path, restorer_files, present,
                                                                               default):
    _link_restorers(tmp_path, restorer_files, [f"{RESTORERS[name].folder}/{RESTORERS[name].file}" for name in present])
    write_detector(tmp_path / DETECTOR_FILE)
    assert FaceRestorers(tmp_path, CPU).find(None, "restore_faces").name == default


def test_an_unknown_restorer_option_is_refused(engine):
    output = make_handler(engine)({"input": {"prompt": "a cat", "restore_faces": True,
                                             "override_settings": {"face_restoration_model": "Nope"}}})
    assert output["error"].startswith("override_settings: face_restoration_model: Input should be 'CodeFormer' or "
                                      "'GFPGAN'")


# ---------------------------------------------------------------- restore_faces in txt2img and img2img

@pytest.fixture
def every_cell_engine(face_engine, tmp_path, restorer_files, monkeypatch):
    """face_engine whose detector finds one face in any image."""
    monkeypatch.setattr(face_engine, "faces", FaceRestorers(_models_dir(tmp_path, restorer_files, True), CPU))
    return face_engine


def test_txt2img_restore_faces_restores_the_generated_image(every_cell_engine):
    request = {"prompt": "a face", "seed": 11, "steps": 2, "width": 64, "height": 64}
    plain = route(every_cell_engine, "POST", "txt2img", request)
    restored = route(every_cell_engine, "POST", "txt2img", {**request, "restore_faces": True})
    restorer = every_cell_engine.faces.find("CodeFormer", "test").with_weight(0.5)
    expected = restorer(Image.fromarray(opened(plain["images"][0]).astype(np.uint8), "RGB"))
    assert np.array_equal(opened(restored["images"][0]), np.asarray(expected))
    assert not np.array_equal(opened(restored["images"][0]), opened(plain["images"][0]))
    info = json.loads(restored["info"])
    assert (info["restore_faces"], info["face_restoration_model"]) == (True, "CodeFormer")
    assert "Seed: 11, Face restoration: CodeFormer, Size: 64x64," in info["infotexts"][0]
    assert "Face restoration" not in json.loads(plain["info"])["infotexts"][0]


def test_img2img_restore_faces_uses_the_options_restorer(every_cell_engine):
    request = {"init_images": [b64(picture(64, 64))], "prompt": "a face", "seed": 3, "steps": 2, "width": 64,
               "height": 64, "denoising_strength": 0.5, "override_settings": {"face_restoration_model": "GFPGAN"}}
    plain = route(every_cell_engine, "POST", "img2img", request)
    restored = route(every_cell_engine, "POST", "img2img", {**request, "restore_faces": True})
    restorer = every_cell_engine.faces.find("GFPGAN", "test")
    expected = restorer(Image.fromarray(opened(plain["images"][0]).astype(np.uint8), "RGB"))
    assert np.array_equal(opened(restored["images"][0]), np.asarray(expected))
    assert "Face restoration: GFPGAN," in json.loads(restored["info"])["infotexts"][0]


# ---------------------------------------------------------------- out of the box: the image's manifest, the demo

def test_the_images_manifest_bakes_the_restorer_the_default_options_use_and_the_detector(tmp_path, restorer_files):
    baked = {entry.relative_path for entry in read_manifest(REPO_ROOT / "models.toml")
             if entry.kind == "face_restoration"}
    assert baked == {f"{RESTORERS['GFPGAN'].folder}/{RESTORERS['GFPGAN'].file}", DETECTOR_FILE}
    _link_restorers(tmp_path, restorer_files, [path for path in baked if path != DETECTOR_FILE])
    write_detector(tmp_path / DETECTOR_FILE)
    assert FaceRestorers(tmp_path, CPU).find(Options().face_restoration_model, "restore_faces").name == "GFPGAN"


def test_the_demo_restores_faces_with_default_options(demo_engine):
    assert demo_engine.options.face_restoration_model is None
    request = {"prompt": "a face", "seed": 5, "steps": 1, "width": 64, "height": 64}
    plain = make_handler(demo_engine)({"input": request})
    restored = make_handler(demo_engine)({"input": {**request, "restore_faces": True}})
    assert not np.array_equal(opened(restored["images"][0]), opened(plain["images"][0]))
    info = json.loads(restored["info"])
    assert (info["restore_faces"], info["face_restoration_model"]) == (True, "CodeFormer")
    assert "Face restoration: CodeFormer," in info["infotexts"][0]
