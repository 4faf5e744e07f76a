"""Hostile inputs through both adapters: a corpus of bad requests that must each be refused cleanly,
valid-but-odd requests that must be served, and a seeded, bounded fuzz of request bodies.

The contract every refusal must keep:
  - HTTP (handler/http/app.py): a 4xx status (never 5xx), a JSON body that names the field;
  - RunPod (handler/worker.py): exactly {"error": "<text>"}, the text one line, naming the field, not an
    "internal error", no traceback, and short (under 1000 characters even when the input is huge).
Neither may change the server's options, and after each batch of cases a good request (txt2img 64x64,
1 step, seed 1) must still be served with the same image bytes as before the corpus.

Sections:
  - CORPUS: refused requests, through RunPod (bare body where the body routes there, and the envelope) and HTTP;
    ENVELOPES (RunPod only) and RAW_HTTP (HTTP only, bodies that are not JSON objects);
  - ACCEPTED: odd but valid requests that must be served; TOLERATED: served or refused, but never a 5xx;
  - cost: valid prompts / png-info texts of a few kB on which parsing is quadratic must answer quickly;
  - guarded: requests that would exhaust the machine if accepted run with generation replaced by a guard;
  - a seeded, bounded hypothesis fuzz of bodies over HTTP.

Everything is tiny (64x64, 1-2 steps) so that a hostile request the worker wrongly accepts stays cheap.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from handler.http.app import create_app
from handler.worker import make_handler

NAN, INF = float("nan"), float("inf")
MAX_ERROR_CHARS = 1000
GOOD = {"prompt": "a red cube on a table", "width": 64, "height": 64, "steps": 1, "seed": 1}
T2I = {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": 1}  # the base of txt2img cases
GENERATION = ("txt2img", "img2img", "extra-single-image", "extra-batch-images")


# ---------------------------------------------------------------- images, built here byte by byte

def png_bytes(size=(64, 64), color=(200, 30, 30), mode="RGB", text: dict[str, str] | None = None) -> bytes:
    image = Image.new(mode, size, color)
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose IHDR declares width x height RGB pixels, with a tiny IDAT: PIL refuses it on open
    (DecompressionBombError, which is not an OSError)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + png_chunk(b"IEND", b""))


def with_chunk_before_iend(png: bytes, kind: bytes, data: bytes) -> bytes:
    assert png.endswith(png_chunk(b"IEND", b""))
    return png[:-12] + png_chunk(kind, data) + png[-12:]


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return b64(buffer.getvalue())


PNG64 = b64(png_bytes())
PNG_OTHER_SIZE = b64(png_bytes((96, 64), (30, 200, 30)))
MASK64 = b64(png_bytes((64, 64), 255, "L"))
BOMB = b64(bomb_png())
TRUNCATED_PNG = b64(png_bytes()[:40])
NOT_AN_IMAGE = b64(b"this is plain text, not an image at all" * 4)
BAD_BASE64 = "not base64 at all!!!"
DATA_URI_NOT_IMAGE = "data:image/png;base64," + b64(b"GIF? no, just text")
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
FILE_URL = "file:///etc/passwd"
# hand-written infotext with a Windows path in a quoted value: `"C:\models\sd"` is not valid JSON
BACKSLASH_INFOTEXT = 'a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Model: "C:\\models\\sd15"'
PNG_BACKSLASH_INFOTEXT = b64(png_bytes(text={"parameters": BACKSLASH_INFOTEXT}))
PNG_GARBAGE_EXIF = b64(with_chunk_before_iend(png_bytes(), b"eXIf", b"GARBAGE, NOT A TIFF HEADER"))
HUGE_NAME = "A" * 100_000  # 100 kB
LONE_SURROGATE = "\ud800"
# 1 MB prompts that cost little if wrongly accepted: the long text sits in a prompt-editing branch
# that step 1 of 1 never uses (a plain 1 MB prompt takes ~20 s to encode on the tiny model)
ONE_MB_PROMPT = "[:" + "congratulations " * 62_499 + ":9]"
assert len(ONE_MB_PROMPT) >= 999_980


def t2i(**fields) -> dict[str, Any]:
    return {**T2I, **fields}


def i2i(**fields) -> dict[str, Any]:
    return {**T2I, "init_images": [PNG64], "denoising_strength": 0.5, **fields}


def hires(**fields) -> dict[str, Any]:
    return t2i(enable_hr=True, denoising_strength=0.5, **fields)


def single(**fields) -> dict[str, Any]:
    return {"image": PNG64, "upscaling_resize": 1, **fields}


def batch(**fields) -> dict[str, Any]:
    return {"imageList": [{"data": PNG64, "name": "a.png"}], "upscaling_resize": 1, **fields}


# ---------------------------------------------------------------- the corpus

@dataclass(frozen=True)
class Case:
    """A request that must be refused; the error must name `field` (any one of them, if a tuple)."""

    name: str
    endpoint: str
    payload: Any
    field: str | tuple[str, ...]
    method: str = "POST"

    @property
    def fields(self) -> tuple[str, ...]:
        return self.field if isinstance(self.field, tuple) else (self.field,)


C = Case
CORPUS: list[Case] = [
    # --- wrong types for common fields
    C("prompt-int", "txt2img", t2i(prompt=123), "prompt"),
    C("prompt-list", "txt2img", t2i(prompt=["a", "b"]), "prompt"),
    C("prompt-object", "txt2img", t2i(prompt={"text": "a"}), "prompt"),
    C("negative_prompt-int", "txt2img", t2i(negative_prompt=5), "negative_prompt"),
    C("negative_prompt-list", "txt2img", t2i(negative_prompt=[None]), "negative_prompt"),
    C("steps-word", "txt2img", t2i(steps="many"), "steps"),
    C("steps-fraction", "txt2img", t2i(steps=1.5), "steps"),
    C("steps-list", "txt2img", t2i(steps=[1]), "steps"),
    C("width-string", "txt2img", t2i(width="64px"), "width"),
    C("width-object", "txt2img", t2i(width={"px": 64}), "width"),
    C("cfg_scale-word", "txt2img", t2i(cfg_scale="high"), "cfg_scale"),
    C("seed-word", "txt2img", t2i(seed="abc"), "seed"),
    C("seed-fraction", "txt2img", t2i(seed=1.5), "seed"),
    C("seed-object", "txt2img", t2i(seed={}), "seed"),
    C("subseed-list", "txt2img", t2i(subseed=[1]), "subseed"),
    C("sampler_name-int", "txt2img", t2i(sampler_name=5), "sampler_name"),
    C("sampler_name-list", "txt2img", t2i(sampler_name=["Euler"]), "sampler_name"),
    C("scheduler-int", "txt2img", t2i(scheduler=7), "scheduler"),
    C("batch_size-word", "txt2img", t2i(batch_size="two"), "batch_size"),
    C("n_iter-list", "txt2img", t2i(n_iter=[]), "n_iter"),
    C("denoising_strength-word", "img2img", i2i(denoising_strength="strong"), "denoising_strength"),
    C("restore_faces-word", "txt2img", t2i(restore_faces="maybe"), "restore_faces"),
    C("tiling-word", "txt2img", t2i(tiling="sometimes"), "tiling"),
    C("override_settings-string", "txt2img", t2i(override_settings="CLIP_stop_at_last_layers=2"),
      "override_settings"),
    C("override_settings-list", "txt2img", t2i(override_settings=[1, 2]), "override_settings"),
    C("styles-string", "txt2img", t2i(styles="cinematic"), "styles"),
    C("send_images-word", "txt2img", t2i(send_images="nope"), "send_images"),
    C("subseed_strength-word", "txt2img", t2i(subseed_strength="half"), "subseed_strength"),
    C("enable_hr-word", "txt2img", t2i(enable_hr="sure"), "enable_hr"),
    C("hr_scale-word", "txt2img", hires(hr_scale="2x"), "hr_scale"),
    C("hr_upscaler-int", "txt2img", hires(hr_upscaler=5), "hr_upscaler"),
    C("alwayson_scripts-string", "txt2img", t2i(alwayson_scripts="x"), "alwayson_scripts"),
    C("comments-string", "txt2img", t2i(comments="x"), "comments"),
    C("eta-word", "txt2img", t2i(eta="x"), "eta"),
    C("seed_resize_from_w-word", "txt2img", t2i(seed_resize_from_w="abc"), "seed_resize_from_w"),
    C("override_settings_restore_afterwards-word", "txt2img",
      t2i(override_settings_restore_afterwards="later"), "override_settings_restore_afterwards"),
    C("force_task_id-int", "txt2img", t2i(force_task_id=5), "force_task_id"),
    # --- out-of-range numbers
    C("steps-negative", "txt2img", t2i(steps=-5), "steps"),
    C("steps-zero", "txt2img", t2i(steps=0), "steps"),
    C("steps-1e9", "txt2img", t2i(steps=1e9), "steps"),
    C("width-zero", "txt2img", t2i(width=0), "width"),
    C("width-1e9", "txt2img", t2i(width=1e9), "width"),
    C("width-negative", "txt2img", t2i(width=-64), "width"),
    C("width-over-max", "txt2img", t2i(width=4096), "width"),
    C("height-under-min", "txt2img", t2i(height=63), "height"),
    C("batch_size-1e9", "txt2img", t2i(batch_size=1e9), "batch_size"),
    C("batch_size-zero", "txt2img", t2i(batch_size=0), "batch_size"),
    C("n_iter-negative", "txt2img", t2i(n_iter=-1), "n_iter"),
    C("n_iter-times-batch_size-104", "txt2img", t2i(batch_size=8, n_iter=13), "batch_size"),
    C("n_iter-2e31", "txt2img", t2i(n_iter=2**31), "n_iter"),
    C("cfg_scale-1e6", "txt2img", t2i(cfg_scale=1e6), "cfg_scale"),
    C("cfg_scale-negative", "txt2img", t2i(cfg_scale=-1), "cfg_scale"),
    C("seed-2e32", "txt2img", t2i(seed=2**32), "seed"),
    C("seed-minus-2", "txt2img", t2i(seed=-2), "seed"),
    C("seed-2e64", "txt2img", t2i(seed=2**64 + 5), "seed"),
    C("subseed-2e40", "txt2img", t2i(subseed=2**40), "subseed"),
    C("subseed_strength-2", "txt2img", t2i(subseed_strength=2), "subseed_strength"),
    C("subseed_strength-negative", "txt2img", t2i(subseed_strength=-0.5), "subseed_strength"),
    C("denoising_strength-1.5", "txt2img", t2i(denoising_strength=1.5), "denoising_strength"),
    C("eta-negative", "txt2img", t2i(eta=-1), "eta"),
    C("seed_resize-1e9", "txt2img", t2i(seed_resize_from_w=1e9, seed_resize_from_h=1e9),
      ("seed_resize_from_w", "seed_resize_from_h")),
    C("seed_resize-2e63", "txt2img", t2i(seed_resize_from_w=2**63, seed_resize_from_h=2**63),
      ("seed_resize_from_w", "seed_resize_from_h")),
    # --- hires fix out of range
    C("hires-hr_scale-100", "txt2img", hires(hr_scale=100), "hr_scale"),
    C("hires-hr_resize_x-100000", "txt2img", hires(hr_resize_x=100_000), "hr_resize_x"),
    C("hires-below-min-side", "txt2img", hires(hr_scale=0.5), "hr_scale"),
    C("hires-over-max-side", "txt2img", hires(width=2048, height=2048, hr_scale=4),
      ("hr_scale", "hr_resize_x", "hr_resize_y")),
    C("hires-without-denoising_strength", "txt2img", t2i(enable_hr=True), "denoising_strength"),
    C("hires-hr_second_pass_steps-negative", "txt2img", hires(hr_second_pass_steps=-1), "hr_second_pass_steps"),
    C("hires-hr_second_pass_steps-1e9", "txt2img", hires(hr_second_pass_steps=10**9), "hr_second_pass_steps"),
    # --- inf / nan (JSON NaN, Infinity, -Infinity)
    C("eta-nan", "txt2img", t2i(eta=NAN), "eta"),
    C("eta-inf", "txt2img", t2i(eta=INF), "eta"),
    C("s_tmax-nan", "txt2img", t2i(s_tmax=NAN), "s_tmax"),
    C("s_tmax-minus-inf", "txt2img", t2i(s_tmax=-INF), "s_tmax"),
    C("refiner_switch_at-nan", "txt2img", t2i(refiner_switch_at=NAN), "refiner_switch_at"),
    C("refiner_switch_at-inf", "txt2img", t2i(refiner_switch_at=INF), "refiner_switch_at"),
    C("image_cfg_scale-nan", "img2img", i2i(image_cfg_scale=NAN), "image_cfg_scale"),
    C("image_cfg_scale-minus-inf", "img2img", i2i(image_cfg_scale=-INF), "image_cfg_scale"),
    C("cfg_scale-nan", "txt2img", t2i(cfg_scale=NAN), "cfg_scale"),
    C("cfg_scale-inf", "txt2img", t2i(cfg_scale=INF), "cfg_scale"),
    C("denoising_strength-nan", "img2img", i2i(denoising_strength=NAN), "denoising_strength"),
    C("denoising_strength-inf", "img2img", i2i(denoising_strength=INF), "denoising_strength"),
    C("hr_scale-nan", "txt2img", hires(hr_scale=NAN), "hr_scale"),
    C("hr_scale-inf", "txt2img", hires(hr_scale=INF), "hr_scale"),
    C("subseed_strength-nan", "txt2img", t2i(subseed_strength=NAN), "subseed_strength"),
    C("subseed_strength-inf", "txt2img", t2i(subseed_strength=INF), "subseed_strength"),
    C("initial_noise_multiplier-nan", "img2img", i2i(initial_noise_multiplier=NAN), "initial_noise_multiplier"),
    C("comments-with-nan", "txt2img", t2i(comments={"note": NAN}), "comments"),
    C("override-code_former_weight-nan", "txt2img", t2i(override_settings={"code_former_weight": NAN}),
      "code_former_weight"),
    C("extras-upscaling_resize-nan", "extra-single-image", single(upscaling_resize=NAN), "upscaling_resize"),
    C("extras-visibility-inf", "extra-single-image", single(extras_upscaler_2_visibility=INF),
      "extras_upscaler_2_visibility"),
    # --- unknown names
    C("sampler_name-unknown", "txt2img", t2i(sampler_name="Nope"), "sampler_name"),
    C("sampler_name-100kB", "txt2img", t2i(sampler_name=HUGE_NAME), "sampler_name"),
    C("sampler_index-unknown", "txt2img", t2i(sampler_index="Nope"), "sampler_index"),
    C("sampler_name-no-diffusers-equivalent", "txt2img", t2i(sampler_name="DPM fast"), "sampler_name"),
    C("scheduler-unknown", "txt2img", t2i(scheduler="Nope"), "scheduler"),
    C("scheduler-100kB", "txt2img", t2i(scheduler=HUGE_NAME), "scheduler"),
    C("scheduler-not-for-sampler", "txt2img", t2i(sampler_name="DDIM", scheduler="Karras"), "scheduler"),
    C("eta-over-1", "txt2img", t2i(sampler_name="Euler a", eta=1.5), "eta"),
    C("hr_sampler_name-unknown", "txt2img", hires(hr_sampler_name="Nope"), "hr_sampler_name"),
    C("hr_upscaler-unknown", "txt2img", hires(hr_upscaler="Nope"), "hr_upscaler"),
    C("hr_upscaler-100kB", "txt2img", hires(hr_upscaler=HUGE_NAME), "hr_upscaler"),
    C("extras-upscaler_1-unknown", "extra-single-image", single(upscaler_1="Nope"), "upscaler_1"),
    C("extras-upscaler_2-traversal", "extra-batch-images",
      batch(upscaler_1="Lanczos", upscaler_2="../../etc/passwd", extras_upscaler_2_visibility=0.5), "upscaler_2"),
    C("restore_faces-without-models", "txt2img", t2i(restore_faces=True), "restore_faces"),
    # --- images: bad base64, not images, truncated, decompression bombs, URLs
    C("init_images-bad-base64", "img2img", i2i(init_images=[BAD_BASE64]), "init_images"),
    C("init_images-not-an-image", "img2img", i2i(init_images=[NOT_AN_IMAGE]), "init_images"),
    C("init_images-truncated-png", "img2img", i2i(init_images=[TRUNCATED_PNG]), "init_images"),
    C("init_images-bomb", "img2img", i2i(init_images=[BOMB]), "init_images"),
    C("init_images-second-is-bomb", "img2img", i2i(init_images=[PNG64, BOMB]), "init_images"),
    C("init_images-metadata-url", "img2img", i2i(init_images=[METADATA_URL]), "init_images"),
    C("init_images-file-url", "img2img", i2i(init_images=[FILE_URL]), "init_images"),
    C("init_images-data-uri-not-image", "img2img", i2i(init_images=[DATA_URI_NOT_IMAGE]), "init_images"),
    C("init_images-empty-list", "img2img", i2i(init_images=[]), "init_images"),
    C("init_images-string", "img2img", i2i(init_images=PNG64), "init_images"),
    C("init_images-int", "img2img", i2i(init_images=[123]), "init_images"),
    # init_images stops at limits.MAX_IMAGES, as imageList does: every one is decoded
    C("init_images-101-images", "img2img", i2i(init_images=[PNG64] * 101), "init_images"),
    C("mask-bad-base64", "img2img", i2i(mask=BAD_BASE64), "mask"),
    C("mask-bomb", "img2img", i2i(mask=BOMB), "mask"),
    C("mask-truncated-png", "img2img", i2i(mask=TRUNCATED_PNG), "mask"),
    C("mask-file-url", "img2img", i2i(mask=FILE_URL), "mask"),
    C("image-bad-base64", "extra-single-image", single(image=BAD_BASE64), "image"),
    C("image-bomb", "extra-single-image", single(image=BOMB), "image"),
    C("image-truncated-png", "extra-single-image", single(image=TRUNCATED_PNG), "image"),
    C("image-metadata-url", "extra-single-image", single(image=METADATA_URL), "image"),
    C("image-empty", "extra-single-image", single(image=""), "image"),
    C("image-int", "extra-single-image", single(image=5), "image"),
    C("imageList-bomb", "extra-batch-images", batch(imageList=[{"data": BOMB}]), "imageList"),
    C("imageList-bad-base64", "extra-batch-images", batch(imageList=[{"data": BAD_BASE64}]), "imageList"),
    C("imageList-truncated-png", "extra-batch-images", batch(imageList=[{"data": TRUNCATED_PNG}]), "imageList"),
    C("imageList-file-url", "extra-batch-images", batch(imageList=[{"data": FILE_URL}]), "imageList"),
    C("imageList-item-without-data", "extra-batch-images", batch(imageList=[{"name": "x.png"}]), "imageList"),
    C("imageList-string", "extra-batch-images", batch(imageList="x"), "imageList"),
    C("imageList-empty", "extra-batch-images", batch(imageList=[]), "imageList"),
    C("png-info-bomb", "png-info", {"image": BOMB}, "image"),
    C("png-info-bad-base64", "png-info", {"image": BAD_BASE64}, "image"),
    C("png-info-truncated-png", "png-info", {"image": TRUNCATED_PNG}, "image"),
    C("png-info-file-url", "png-info", {"image": FILE_URL}, "image"),
    C("png-info-no-image", "png-info", {}, "image"),
    C("png-info-surrogate", "png-info", {"image": LONE_SURROGATE}, "image"),
    # --- path traversal in model names
    C("checkpoint-traversal", "txt2img", t2i(override_settings={"sd_model_checkpoint": "../../etc/passwd"}),
      "sd_model_checkpoint"),
    C("checkpoint-absolute-path", "txt2img", t2i(override_settings={"sd_model_checkpoint": "/etc/passwd"}),
      "sd_model_checkpoint"),
    C("vae-traversal", "txt2img", t2i(override_settings={"sd_vae": "../x"}), "sd_vae"),
    C("vae-traversal-to-checkpoint", "txt2img",
      t2i(override_settings={"sd_vae": "../Stable-diffusion/tiny-sd15.safetensors"}), "sd_vae"),
    C("lora-traversal", "txt2img", t2i(prompt="<lora:../../x:1>"), "prompt"),
    C("lora-absolute-path-in-negative", "txt2img", t2i(negative_prompt="<lora:/etc/passwd:1>"), "negative_prompt"),
    C("lora-weight-nan", "txt2img", t2i(prompt="<lora:x:nan>"), "prompt"),
    C("lora-weight-1e400", "txt2img", t2i(prompt="<lora:x:1e400>"), "prompt"),
    C("extra-network-hypernet", "txt2img", t2i(prompt="<hypernet:x:1>"), "prompt"),
    C("options-checkpoint-traversal", "options", {"sd_model_checkpoint": "../../etc/passwd"}, "sd_model_checkpoint"),
    C("options-vae-traversal", "options", {"sd_vae": "../x"}, "sd_vae"),
    # --- checkpoint null, clip skip, ENSD
    C("override-checkpoint-null", "txt2img", t2i(override_settings={"sd_model_checkpoint": None}),
      "sd_model_checkpoint"),
    C("options-checkpoint-null", "options", {"sd_model_checkpoint": None}, "sd_model_checkpoint"),
    C("override-clip-skip-99", "txt2img", t2i(override_settings={"CLIP_stop_at_last_layers": 99}),
      "CLIP_stop_at_last_layers"),
    C("override-clip-skip-deeper-than-encoder", "txt2img", t2i(override_settings={"CLIP_stop_at_last_layers": 12}),
      "CLIP_stop_at_last_layers"),
    C("override-clip-skip-deeper-than-encoder-kept", "txt2img",
      t2i(override_settings={"CLIP_stop_at_last_layers": 12}, override_settings_restore_afterwards=False),
      "CLIP_stop_at_last_layers"),
    # accepted today and stored: every later generation then fails (IndexError) until someone resets it
    C("options-clip-skip-deeper-than-encoder", "options", {"CLIP_stop_at_last_layers": 12}, "CLIP_stop_at_last_layers"),
    C("options-clip-skip-99", "options", {"CLIP_stop_at_last_layers": 99}, "CLIP_stop_at_last_layers"),
    C("options-clip-skip-word", "options", {"CLIP_stop_at_last_layers": "x"}, "CLIP_stop_at_last_layers"),
    C("options-samples_format-gif", "options", {"samples_format": "gif"}, "samples_format"),
    C("override-ensd-2e64", "txt2img",
      t2i(sampler_name="Euler a", override_settings={"eta_noise_seed_delta": 2**64 + 5}), "eta_noise_seed_delta"),
    C("options-ensd-2e64", "options", {"eta_noise_seed_delta": 2**64 + 5}, "eta_noise_seed_delta"),
    # --- override_settings: unknown keys, wrong types
    C("override-unknown-key", "txt2img", t2i(override_settings={"not_an_option": 1}), "not_an_option"),
    C("override-clip-skip-word", "txt2img", t2i(override_settings={"CLIP_stop_at_last_layers": "two"}),
      "CLIP_stop_at_last_layers"),
    C("override-samples_format-bmp", "txt2img", t2i(override_settings={"samples_format": "bmp"}), "samples_format"),
    C("override-sd_vae-int", "txt2img", t2i(override_settings={"sd_vae": 5}), "sd_vae"),
    C("override-jpeg_quality-1e9", "txt2img", t2i(override_settings={"jpeg_quality": 1e9}), "jpeg_quality"),
    # --- lone surrogates (what json.loads makes of "\ud800")
    C("prompt-lone-surrogate", "txt2img", t2i(prompt="a " + LONE_SURROGATE + " cat"), "prompt"),
    C("negative_prompt-lone-surrogate", "txt2img", t2i(negative_prompt="a\udfffb"), "negative_prompt"),
    C("hr_upscaler-lone-surrogate", "txt2img", hires(hr_upscaler=LONE_SURROGATE), "hr_upscaler"),
    C("sampler_name-lone-surrogate", "txt2img", t2i(sampler_name=LONE_SURROGATE), "sampler_name"),
    C("lora-name-lone-surrogate", "txt2img", t2i(prompt=f"<lora:{LONE_SURROGATE}:1>"), "prompt"),
    C("override-sd_vae-lone-surrogate", "txt2img", t2i(override_settings={"sd_vae": LONE_SURROGATE}), "sd_vae"),
    # --- prompt structure and size
    # emphasis weights that overflow float32 make NaN conditioning: an all-black image (A1111 raises on NaNs)
    C("prompt-10000-nested-round-groups", "txt2img", t2i(prompt="(" * 10_000 + "x" + ")" * 10_000), "prompt"),
    C("prompt-explicit-weight-1e50", "txt2img", t2i(prompt="(x:" + "9" * 50 + ")"), "prompt"),
    C("prompt-AND-weight-1e50", "txt2img", t2i(prompt="a AND b:" + "9" * 50), "prompt"),
    C("prompt-1MB", "txt2img", t2i(prompt=ONE_MB_PROMPT), "prompt"),
    C("negative_prompt-1MB", "txt2img", t2i(negative_prompt=ONE_MB_PROMPT), "negative_prompt"),
    C("hr_prompt-1MB", "txt2img", t2i(hr_prompt=ONE_MB_PROMPT), "hr_prompt"),
    # --- delivery
    C("delivery-mode-ftp", "txt2img", t2i(delivery={"mode": "ftp"}), "delivery"),
    C("delivery-string", "txt2img", t2i(delivery="s3"), "delivery"),
    C("delivery-s3-without-bucket", "txt2img", t2i(delivery={"mode": "s3"}), "delivery"),
    C("delivery-bucket-too-short", "txt2img", t2i(delivery={"mode": "s3", "bucket": "x"}), "delivery"),
    C("delivery-unknown-key", "txt2img", t2i(delivery={"mode": "base64", "evil": 1}), "delivery"),
    # --- not implemented, other img2img / extras ranges
    C("script_name-traversal", "txt2img", t2i(script_name="../../scripts/x"), "script_name"),
    C("alwayson_scripts-controlnet", "txt2img",
      t2i(alwayson_scripts={"controlnet": {"args": [{"enabled": True, "module": "canny"}]}}),  # no image
      "alwayson_scripts.controlnet.args[0].image"),
    C("resize_mode-7", "img2img", i2i(resize_mode=7), "resize_mode"),
    C("mask_blur-negative", "img2img", i2i(mask=MASK64, mask_blur=-1), "mask_blur"),
    C("inpainting_fill-9", "img2img", i2i(mask=MASK64, inpainting_fill=9), "inpainting_fill"),
    C("extras-resize_mode-5", "extra-single-image", single(resize_mode=5), "resize_mode"),
    C("extras-upscaling_resize-1e9", "extra-single-image", single(upscaling_resize=1e9), "upscaling_resize"),
    C("extras-resize_w-1e9", "extra-single-image", single(resize_mode=1, upscaling_resize_w=10**9),
      "upscaling_resize_w"),
    C("extras-gfpgan_visibility-2", "extra-batch-images", batch(gfpgan_visibility=2), "gfpgan_visibility"),
    # --- endpoints
    C("unknown-endpoint", "nope", {}, "nope"),
    C("traversal-endpoint", "..%2F..%2Fetc%2Fpasswd", {}, "passwd"),
]

# Requests that are valid (or that A1111 serves) and must be served: odd but legitimate
@dataclass(frozen=True)
class Accepted:
    name: str
    endpoint: str
    payload: dict[str, Any]
    method: str = "POST"
    check: Any = None  # check(body) for extra assertions on the response body


def _pnginfo_backslash(body):
    assert body["info"] == BACKSLASH_INFOTEXT, body["info"]
    assert "models" in str(body["parameters"].get("Model")), body["parameters"]


def _image_size(size):
    def check(body):
        images = body.get("images") or [body.get("image")]
        for image in images:
            assert Image.open(io.BytesIO(base64.b64decode(image))).size == size
    return check


def _init(image: Image.Image, fmt="PNG", **params) -> list[str]:
    return [encoded(image, fmt, **params)]


TINY = Image.new("RGB", (1, 1), (9, 9, 9))
PALETTE = Image.new("P", (64, 64), 3)
PALETTE.info["transparency"] = 3
ACCEPTED: list[Accepted] = [
    Accepted("prompt-rtl", "txt2img", t2i(prompt="مرحبا بالعالم \u202ereversed\u202c שלום")),
    Accepted("prompt-zero-width", "txt2img", t2i(prompt="a\u200bcat\u200c\u200d\u2060\ufeff")),
    Accepted("prompt-emoji-zwj", "txt2img", t2i(prompt="🐱\u200d👤 🏳️\u200d🌈 👩🏽\u200d🚀")),
    Accepted("prompt-nul", "txt2img", t2i(prompt="a\u0000cat")),
    Accepted("prompt-zalgo", "txt2img", t2i(prompt="Z̴̡̪a̷̛l̸̢g̵̨o̶̧")),
    Accepted("prompt-line-separators", "txt2img", t2i(prompt="a\u2028b\u2029c\r\nd\te")),
    Accepted("prompt-cjk-and-fullwidth", "txt2img", t2i(prompt="猫 ｃａｔ （ｂｒａｃｋｅｔｓ）")),
    Accepted("negative_prompt-emoji-only", "txt2img", t2i(negative_prompt="🙈🙉🙊")),
    Accepted("prompt-empty", "txt2img", t2i(prompt="")),
    Accepted("prompt-a1111-syntax", "txt2img", t2i(prompt="\\(x\\) (a:1.3) [b] [a:b:0.5] [c|d] e AND f BREAK g")),
    Accepted("seed-empty-string-is-random", "txt2img", t2i(seed="")),
    Accepted("seed-null-is-random", "txt2img", t2i(seed=None)),
    Accepted("unknown-top-level-fields", "txt2img", t2i(foo={"bar": [1, 2]}, __proto__={"x": 1})),
    Accepted("comments-object", "txt2img", t2i(comments={"a": "b"})),
    Accepted("png-info-quoted-backslash", "png-info", {"image": PNG_BACKSLASH_INFOTEXT}, check=_pnginfo_backslash),
    Accepted("png-info-jpeg-without-metadata", "png-info", {"image": encoded(Image.new("RGB", (8, 8)), "JPEG")}),
    Accepted("img2img-1x1-resize-0", "img2img", i2i(init_images=_init(TINY), resize_mode=0),
             check=_image_size((64, 64))),
    Accepted("img2img-1x1-resize-1", "img2img", i2i(init_images=_init(TINY), resize_mode=1),
             check=_image_size((64, 64))),
    Accepted("img2img-1x1-resize-2", "img2img", i2i(init_images=_init(TINY), resize_mode=2),
             check=_image_size((64, 64))),
    Accepted("img2img-1x1-resize-3", "img2img", i2i(init_images=_init(TINY), resize_mode=3),
             check=_image_size((64, 64))),
    Accepted("img2img-rgba", "img2img", i2i(init_images=_init(Image.new("RGBA", (64, 64), (1, 2, 3, 0))))),
    Accepted("img2img-palette-transparency", "img2img", i2i(init_images=_init(PALETTE))),
    Accepted("img2img-16-bit-grey", "img2img", i2i(init_images=_init(Image.new("I;16", (64, 64), 40000)))),
    Accepted("img2img-cmyk-jpeg", "img2img", i2i(init_images=_init(Image.new("CMYK", (64, 64)), "JPEG"))),
    Accepted("img2img-1-bit", "img2img", i2i(init_images=_init(Image.new("1", (64, 64), 1)))),
    Accepted("inpaint-empty-mask-only-masked", "img2img", i2i(mask=b64(png_bytes((64, 64), 0, "L")),
                                                               inpaint_full_res=True), check=_image_size((64, 64))),
    Accepted("inpaint-1-bit-mask", "img2img", i2i(mask=encoded(Image.new("1", (64, 64), 1)))),
    Accepted("inpaint-rgba-mask-of-other-size", "img2img", i2i(mask=encoded(Image.new("RGBA", (17, 33), (255,) * 4)))),
    Accepted("extras-1x1-upscaled-8", "extra-single-image",
             {"image": encoded(TINY), "upscaling_resize": 8, "upscaler_1": "Lanczos"}, check=_image_size((8, 8))),
    Accepted("extras-batch-two-sizes", "extra-batch-images",
             {"imageList": [{"data": PNG64}, {"data": PNG_OTHER_SIZE}], "upscaling_resize": 1}),
    Accepted("options-unknown-key-ignored", "options", {"totally_unknown_option": 1}),
    # A1111 declares these Optional: null is the default
    Accepted("steps-null", "txt2img", t2i(steps=None)),
    Accepted("height-null", "txt2img", t2i(height=None, width=64), check=_image_size((64, 512))),
    # floored to a multiple of 8, as A1111 generates it
    Accepted("height-not-multiple-of-8", "txt2img", t2i(height=71), check=_image_size((64, 64))),
    Accepted("cfg_scale-null", "txt2img", t2i(cfg_scale=None)),
    # A1111's ancestral noise scale
    Accepted("eta-with-ancestral-sampler", "txt2img", t2i(sampler_name="Euler a", eta=0.5)),
    # ignored without enable_hr, as in A1111
    Accepted("firstpass_image-without-hires", "txt2img", t2i(firstpass_image=PNG64)),
    # the mask is fitted to each init image
    Accepted("mask-with-init-images-of-two-sizes", "img2img", i2i(init_images=[PNG64, PNG_OTHER_SIZE], mask=MASK64,
                                                                  batch_size=2)),
]

# Either served or refused (4xx naming the field); never a 5xx or an internal error
TOLERATED: list[Case] = [
    C("img2img-png-with-garbage-exif", "img2img", i2i(init_images=[PNG_GARBAGE_EXIF]), "init_images"),
    C("extras-png-with-garbage-exif", "extra-single-image", single(image=PNG_GARBAGE_EXIF), "image"),
    C("png-info-png-with-garbage-exif", "png-info", {"image": PNG_GARBAGE_EXIF}, "image"),
    # the schema lets s_tmax be infinity on purpose (A1111 reads 0 as infinity): fine if the answer is JSON
    C("s_tmax-infinity", "txt2img", t2i(s_tmax=INF), "s_tmax"),
    # image modes PIL reads (TIFF) that the docs don't promise: served or refused, but not a 5xx
    C("img2img-init-tiff-float", "img2img", i2i(init_images=[encoded(Image.new("F", (64, 64), 0.5), "TIFF")]),
      "init_images"),
    C("img2img-init-tiff-lab", "img2img", i2i(init_images=[encoded(Image.new("LAB", (64, 64)), "TIFF")]),
      "init_images"),
    C("img2img-mask-tiff-lab", "img2img", i2i(mask=encoded(Image.new("LAB", (64, 64)), "TIFF")), "mask"),
    C("img2img-mask-tiff-float", "img2img", i2i(mask=encoded(Image.new("F", (64, 64), 1.0), "TIFF")), "mask"),
    C("extras-tiff-lab", "extra-single-image", single(image=encoded(Image.new("LAB", (64, 64)), "TIFF"),
                                                      upscaler_1="Lanczos"), "image"),
    C("png-info-tiff-lab", "png-info", {"image": encoded(Image.new("LAB", (64, 64)), "TIFF")}, "image"),
    # unbalanced brackets around no text (or with a weight that underflows to ~0): A1111 serves these
    C("prompt-10000-open-round-brackets", "txt2img", t2i(prompt="(" * 10_000), "prompt"),
    C("prompt-10000-open-square-brackets", "txt2img", t2i(prompt="[" * 10_000), "prompt"),
    C("prompt-10000-open-square-brackets-then-text", "txt2img", t2i(prompt="[" * 10_000 + "x"), "prompt"),
]

# RunPod-only inputs: (name, job, field)
ENVELOPES: list[tuple[str, dict[str, Any], str | tuple[str, ...]]] = [
    ("input-list", {"input": [1, 2]}, "input"),
    ("input-string", {"input": "txt2img"}, "input"),
    ("input-null", {"input": None}, "input"),
    ("input-int", {"input": 5}, "input"),
    ("input-missing", {}, "input"),
    ("api-string", {"input": {"api": "txt2img", "payload": T2I}}, "api"),
    ("api-list", {"input": {"api": ["POST", "txt2img"], "payload": T2I}}, "api"),
    ("api-without-endpoint", {"input": {"api": {"method": "POST"}, "payload": T2I}}, "api"),
    ("endpoint-int", {"input": {"api": {"method": "POST", "endpoint": 5}, "payload": T2I}}, "api"),
    ("endpoint-null", {"input": {"api": {"method": "POST", "endpoint": None}, "payload": T2I}}, "api"),
    ("method-delete", {"input": {"api": {"method": "DELETE", "endpoint": "/sdapi/v1/txt2img"}, "payload": T2I}},
     "method"),
    ("method-int", {"input": {"api": {"method": 1, "endpoint": "/sdapi/v1/txt2img"}, "payload": T2I}}, "method"),
    ("method-get-on-txt2img", {"input": {"api": {"method": "GET", "endpoint": "/sdapi/v1/txt2img"}}}, "endpoint"),
    ("post-on-get-endpoint", {"input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/sd-models"}}}, "endpoint"),
    ("payload-list", {"input": {"api": {"method": "POST", "endpoint": "txt2img"}, "payload": [T2I]}}, "payload"),
    ("payload-string", {"input": {"api": {"method": "POST", "endpoint": "txt2img"}, "payload": "{}"}}, "payload"),
    ("payload-null", {"input": {"api": {"method": "POST", "endpoint": "txt2img"}, "payload": None}}, "payload"),
    ("endpoint-unknown", {"input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/nope"}, "payload": {}}},
     "endpoint"),
    ("endpoint-traversal", {"input": {"api": {"method": "POST", "endpoint": "../../etc/passwd"}, "payload": {}}},
     "endpoint"),
    ("endpoint-100kB", {"input": {"api": {"method": "POST", "endpoint": HUGE_NAME}, "payload": {}}}, "endpoint"),
    ("bare-image-and-prompt", {"input": {"image": PNG64, "prompt": "a cat"}}, "prompt"),
    ("delivery-beside-envelope-int", {"input": {"api": {"method": "POST", "endpoint": "txt2img"}, "payload": T2I,
                                                "delivery": 5}}, "delivery"),
    ("s3Config-string", {"input": T2I, "s3Config": "bucket"}, "s3Config"),
    ("s3Config-bucketName-int", {"input": T2I, "s3Config": {"bucketName": 5}}, ("s3Config", "bucketName")),
]

# HTTP-only raw bodies: (name, path, method, body bytes, field)
RAW_HTTP: list[tuple[str, str, str, bytes, str | tuple[str, ...]]] = [
    ("json-truncated", "txt2img", "POST", b'{"prompt": "a"', "body"),
    ("json-single-quotes", "txt2img", "POST", b"{'prompt': 'a'}", "body"),
    ("json-trailing-comma", "txt2img", "POST", b'{"prompt": "a",}', "body"),
    ("json-bare-word", "txt2img", "POST", b"nul", "body"),
    ("json-invalid-utf8", "txt2img", "POST", b'{"prompt": "\xff\xfe"}', "body"),
    ("json-array", "txt2img", "POST", b"[1, 2]", "body"),
    ("json-string", "txt2img", "POST", b'"txt2img"', "body"),
    ("json-null", "txt2img", "POST", b"null", "body"),
    ("json-100000-nested-arrays", "txt2img", "POST", b"[" * 100_000 + b"]" * 100_000, "body"),
    ("json-100000-nested-in-field", "txt2img", "POST",
     b'{"comments": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}", ("body", "comments")),
    ("json-1e999-eta", "txt2img", "POST", json.dumps(T2I).encode()[:-1] + b', "eta": 1e999}', "eta"),
    ("json-lone-surrogate-escape", "txt2img", "POST", json.dumps(T2I).encode()[:-1] + b', "hr_upscaler": "\\ud800", '
     b'"enable_hr": true, "denoising_strength": 0.5}', "hr_upscaler"),
    ("delete-on-txt2img", "txt2img", "DELETE", b"", "txt2img"),
    ("get-on-txt2img", "txt2img", "GET", b"", "txt2img"),
    ("put-on-options", "options", "PUT", b"{}", "options"),
]


# ---------------------------------------------------------------- adapters

def bare_endpoint(payload: Any) -> str | None:
    """The endpoint a bare RunPod body is routed to (README: by its keys), or None if it can't be bare."""
    if not isinstance(payload, dict):
        return None
    for key, endpoint in (("init_images", "img2img"), ("imageList", "extra-batch-images"),
                          ("image", "extra-single-image")):
        if key in payload:
            return endpoint
    return "txt2img"


def envelope(method: str, endpoint: str, payload: Any) -> dict[str, Any]:
    """RunPod's envelope; `delivery` goes beside `api` (README: input.delivery), not in the A1111 payload."""
    job_input = {"api": {"method": method, "endpoint": f"/sdapi/v1/{endpoint}"}, "payload": payload}
    if isinstance(payload, dict) and "delivery" in payload:
        job_input["payload"] = {k: v for k, v in payload.items() if k != "delivery"}
        job_input["delivery"] = payload["delivery"]
    return job_input


def http_json(payload: Any) -> bytes:
    """The JSON text a client sends: NaN/Infinity as Python writes them, lone surrogates as \\ud800."""
    return json.dumps(payload, allow_nan=True, ensure_ascii=True).encode("ascii")


def strict_json(text: str | bytes) -> Any:
    """Parse JSON as a strict client would: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def names_any(text: str, fields: tuple[str, ...]) -> bool:
    return any(f in text for f in fields)


def runpod_refusal_problems(output: Any, fields: tuple[str, ...]) -> list[str]:
    if not isinstance(output, dict) or list(output) != ["error"]:
        keys = list(output) if isinstance(output, dict) else type(output).__name__
        return [f"not refused: output keys {keys} {short(output.get('error', '') if isinstance(output, dict) else '')}"]
    error = output["error"]
    if not isinstance(error, str) or not error:
        return [f"error is not a non-empty string: {short(error)}"]
    problems = []
    if error.startswith("internal error"):
        problems.append(f"internal error: {short(error)}")
    if "\n" in error or "\r" in error:
        problems.append(f"error is not one line: {short(error)}")
    if "Traceback" in error:
        problems.append(f"error holds a traceback: {short(error)}")
    if not names_any(error, fields):
        problems.append(f"error does not name {' or '.join(fields)}: {short(error)}")
    if len(error) >= MAX_ERROR_CHARS:
        problems.append(f"error is {len(error)} chars long: {short(error, 160)}")
    try:
        json.dumps(output, allow_nan=False)
    except ValueError as exc:
        problems.append(f"output is not serialisable as JSON: {exc}")
    return problems


def http_refusal_problems(response, fields: tuple[str, ...]) -> list[str]:
    problems = []
    if not 400 <= response.status_code < 500:
        problems.append(f"status {response.status_code}: {short(response.text)}")
    try:
        body = strict_json(response.content)
    except ValueError:
        problems.append(f"body is not JSON: {short(response.text)}")
    else:
        if not names_any(json.dumps(body, ensure_ascii=False), fields):
            problems.append(f"body does not name {' or '.join(fields)}: {short(response.text)}")
    return problems


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def handle(engine):
    return make_handler(engine)


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine), raise_server_exceptions=False) as test_client:
        yield test_client


def good_via_runpod(handle) -> str:
    output = handle({"id": "good", "input": dict(GOOD)})
    assert "error" not in output, output["error"]
    return output["images"][0]


def good_via_http(client) -> str:
    response = client.post("/sdapi/v1/txt2img", json=GOOD)
    assert response.status_code == 200, response.text[:500]
    return response.json()["images"][0]


@pytest.fixture(scope="module")
def baseline(engine, handle, client) -> str:
    """The good request's image before any hostile input (the same through both adapters)."""
    image = good_via_runpod(handle)
    assert good_via_http(client) == image, "the two adapters give different bytes for the same request"
    return image


class OptionsGuard:
    """Remembers the server's options; `leak()` reports (and undoes) any change since."""

    def __init__(self, engine):
        self.engine, self.before = engine, engine.options

    def leak(self) -> list[str]:
        after = self.engine.options
        if after == self.before:
            return []
        self.engine.options = self.before  # keep the rest of the run independent of this leak
        changed = {k: v for k, v in after.model_dump().items() if self.before.model_dump().get(k) != v}
        return [f"the server's options changed: {short(changed)}"]


def with_checkpoints(cases: list, ids, every: int = 20) -> list:
    """The cases, with a good-request check (None) after every `every` of them and at the end."""
    items = []
    for index, case in enumerate(cases, 1):
        items.append(pytest.param(case, id=ids(case)))
        if index % every == 0 or index == len(cases):
            items.append(pytest.param(None, id=f"good-request-after-{index}"))
    return items


def test_corpus_size():
    names = [c.name for c in CORPUS]
    assert len(names) == len(set(names)), "duplicate case names"
    assert len(CORPUS) >= 100
    assert len(CORPUS) + len(RAW_HTTP) >= 100 and len(CORPUS) + len(ENVELOPES) >= 100


def test_baseline(baseline, decode_png):
    assert decode_png(baseline).size == (64, 64)


# ---------------------------------------------------------------- the corpus through RunPod

BARE_CASES = [c for c in CORPUS if c.endpoint in GENERATION and bare_endpoint(c.payload) == c.endpoint]


@pytest.mark.parametrize("case", with_checkpoints(BARE_CASES, lambda c: c.name))
def test_runpod_bare_refuses(case, engine, handle, baseline):
    if case is None:
        assert good_via_runpod(handle) == baseline, "the good request's image changed after the hostile ones"
        return
    guard = OptionsGuard(engine)
    output = handle({"id": f"hostile-{case.name}", "input": case.payload})
    problems = runpod_refusal_problems(output, case.fields) + guard.leak()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", with_checkpoints(CORPUS, lambda c: c.name))
def test_runpod_envelope_refuses(case, engine, handle, baseline):
    if case is None:
        assert good_via_runpod(handle) == baseline, "the good request's image changed after the hostile ones"
        return
    guard = OptionsGuard(engine)
    output = handle({"id": f"hostile-{case.name}", "input": envelope(case.method, case.endpoint, case.payload)})
    problems = runpod_refusal_problems(output, case.fields) + guard.leak()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name,job,field", [pytest.param(*e, id=e[0]) for e in ENVELOPES])
def test_runpod_malformed_envelope_refused(name, job, field, engine, handle):
    guard = OptionsGuard(engine)
    output = handle({"id": f"envelope-{name}", **job})
    fields = field if isinstance(field, tuple) else (field,)
    problems = runpod_refusal_problems(output, fields) + guard.leak()
    assert not problems, "\n".join(problems)


def test_runpod_good_request_after_envelopes(handle, baseline):
    assert good_via_runpod(handle) == baseline


# ---------------------------------------------------------------- the corpus through HTTP

def http_send(client, method: str, endpoint: str, payload: Any = None, raw: bytes | None = None):
    content = raw if raw is not None else (http_json(payload) if method == "POST" else None)
    return client.request(method, f"/sdapi/v1/{endpoint}", content=content,
                          headers={"content-type": "application/json"} if content is not None else {})


@pytest.mark.parametrize("case", with_checkpoints(CORPUS, lambda c: c.name))
def test_http_refuses(case, engine, client, baseline):
    if case is None:
        assert good_via_http(client) == baseline, "the good request's image changed after the hostile ones"
        return
    guard = OptionsGuard(engine)
    response = http_send(client, case.method, case.endpoint, case.payload)
    problems = http_refusal_problems(response, case.fields) + guard.leak()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name,endpoint,method,raw,field", [pytest.param(*r, id=r[0]) for r in RAW_HTTP])
def test_http_raw_body_refused(name, endpoint, method, raw, field, engine, client):
    guard = OptionsGuard(engine)
    response = http_send(client, method, endpoint, raw=raw)
    problems = http_refusal_problems(response, field if isinstance(field, tuple) else (field,)) + guard.leak()
    assert not problems, "\n".join(problems)


def test_http_good_request_after_raw_bodies(client, baseline):
    assert good_via_http(client) == baseline


# ---------------------------------------------------------------- valid but odd: must be served

@pytest.mark.parametrize("case", [pytest.param(a, id=a.name) for a in ACCEPTED])
def test_accepted_http(case, engine, client):
    guard = OptionsGuard(engine)
    response = http_send(client, case.method, case.endpoint, case.payload)
    assert response.status_code == 200, f"{response.status_code}: {short(response.text)}"
    body = strict_json(response.content)
    if case.check:
        case.check(body)
    assert not guard.leak()


@pytest.mark.parametrize("case", [pytest.param(a, id=a.name) for a in ACCEPTED])
def test_accepted_runpod(case, engine, handle):
    guard = OptionsGuard(engine)
    output = handle({"id": f"accepted-{case.name}", "input": envelope(case.method, case.endpoint, case.payload)})
    assert not (isinstance(output, dict) and "error" in output), short(output.get("error"))
    json.dumps(output, allow_nan=False)  # RunPod sends it as JSON
    if case.check:
        case.check(output)
    assert not guard.leak()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in TOLERATED])
def test_tolerated_http(case, engine, client):
    guard = OptionsGuard(engine)
    response = http_send(client, case.method, case.endpoint, case.payload)
    if response.status_code == 200:
        strict_json(response.content)
        problems = []
    else:
        problems = http_refusal_problems(response, case.fields)
    problems += guard.leak()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in TOLERATED])
def test_tolerated_runpod(case, engine, handle):
    guard = OptionsGuard(engine)
    output = handle({"id": f"tolerated-{case.name}", "input": envelope(case.method, case.endpoint, case.payload)})
    if isinstance(output, dict) and "error" in output:
        problems = runpod_refusal_problems(output, case.fields)
    else:
        json.dumps(output, allow_nan=False)
        problems = []
    problems += guard.leak()
    assert not problems, "\n".join(problems)


# Valid (or at least harmless) prompts of 10-20 kB on which the prompt parser's cost is quadratic: each must be
# answered (served, or refused naming prompt) about as fast as a short prompt. Sizes are chosen so that the
# quadratic cost is about 4-5 s here (30-60x a short request); linear parsing makes them as fast as one.
COSTLY_PROMPTS = {
    # _BREAK_WORD (\s*\bBREAK\b\s*) split in parse_attention; _AND_WEIGHT / _TRAILING_SPACE in split_and
    "whitespace-run-12kB": "a" + " " * 12_000 + "b",
    # EXTRA_NETWORK <(\w+):([^>]+)> in schemas/extra_networks.py: every "<a:" scans to the end
    "unclosed-extra-network-tags-28kB": "<a:" * 9_500,
    # parse_attention's scale_from: every unclosed bracket rescales every later fragment
    "unclosed-brackets-between-words-22kB": "(a" * 11_000,
}


def _timed(send) -> tuple[Any, float]:
    started = time.monotonic()
    result = send()
    return result, time.monotonic() - started


@pytest.mark.parametrize("prompt", [pytest.param(p, id=name) for name, p in COSTLY_PROMPTS.items()])
def test_pathological_prompt_answered_quickly(prompt, client, baseline):
    _, reference = _timed(lambda: good_via_http(client))
    response, elapsed = _timed(lambda: client.post("/sdapi/v1/txt2img", content=http_json(t2i(prompt=prompt)),
                                                   headers={"content-type": "application/json"}))
    assert response.status_code == 200 or not http_refusal_problems(response, ("prompt",)), short(response.text)
    bound = max(2.0, 5 * reference)
    assert elapsed < bound, f"{elapsed:.1f} s for a {len(prompt) // 1000} kB prompt (bound {bound:.1f} s, " \
                            f"a short one took {reference:.2f} s)"


def test_png_info_long_parameters_line_answered_quickly(client):
    """png-info parses the last infotext line with _PARAM in engine/imaging/infotext.py; on a long line of words with
    no ':' the regex backtracks quadratically. The 24 kB text is a 150-byte PNG as zTXt (PIL allows 1 MB:
    hours of CPU per request, and png-info does not queue behind the generation lock)."""
    info = PngInfo()
    info.add_text("parameters", "x\n" + "a " * 12_000, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    assert len(buffer.getvalue()) < 1000
    _, reference = _timed(lambda: client.post("/sdapi/v1/png-info", json={"image": PNG_BACKSLASH_INFOTEXT}))
    response, elapsed = _timed(lambda: client.post("/sdapi/v1/png-info", json={"image": b64(buffer.getvalue())}))
    assert response.status_code == 200 or not http_refusal_problems(response, ("image",)), short(response.text)
    bound = max(2.0, 5 * reference)
    assert elapsed < bound, f"{elapsed:.1f} s for png-info of a {len(buffer.getvalue())}-byte PNG (bound {bound:.1f} s)"


# ---------------------------------------------------------------- expensive if accepted: run with a guard

class ReachedGeneration(RuntimeError):
    pass


@pytest.fixture
def guarded(engine, monkeypatch):
    """Generation replaced by a guard that fails the request: for requests that must be refused before
    any work because the work itself would exhaust the machine."""
    def refuse(*args, **kwargs):
        raise ReachedGeneration("guard: this request reached generation")
    monkeypatch.setattr(engine, "txt2img", refuse)
    monkeypatch.setattr(engine, "img2img", refuse)
    return engine


# width 64 x height 2048 with hr_resize 4096x64: hires_size 4096x64 passes the per-side limit, but the first
# pass is upscaled to cover it at its own aspect ratio, 4096x131072 pixels (1.6 GB as RGB, then VAE-encoded)
HIRES_COVER_BLOWUP = t2i(height=2048, enable_hr=True, denoising_strength=0.5, hr_resize_x=4096, hr_resize_y=64,
                         hr_upscaler="Lanczos")


def test_hires_cover_size_refused_before_work_runpod(guarded, handle):
    output = make_handler(guarded)({"id": "hires-blowup", "input": HIRES_COVER_BLOWUP})
    problems = runpod_refusal_problems(output, ("hr_resize_x", "hr_resize_y", "hr_scale", "height"))
    assert not problems, "\n".join(problems)


def test_hires_cover_size_refused_before_work_http(guarded):
    with TestClient(create_app(guarded), raise_server_exceptions=False) as test_client:
        response = test_client.post("/sdapi/v1/txt2img", json=HIRES_COVER_BLOWUP)
    problems = http_refusal_problems(response, ("hr_resize_x", "hr_resize_y", "hr_scale", "height"))
    assert not problems, "\n".join(problems)


def test_large_init_image_not_vae_encoded_at_full_size(engine, handle, monkeypatch):
    """resize_mode 3 VAE-encodes the init image at its own size: a 4096x4096 PNG (50 kB of request)
    is beyond the worker's own 2048 side limit; it must be refused or resized before encoding."""
    from engine.store.model import LoadedModel

    encode = LoadedModel.encode_images

    def guarded_encode(self, images, *args, **kwargs):
        for image in images:
            if max(image.size) > 2048:
                raise ReachedGeneration(f"guard: VAE encode of a {image.width}x{image.height} image")
        return encode(self, images, *args, **kwargs)

    monkeypatch.setattr(LoadedModel, "encode_images", guarded_encode)
    big = encoded(Image.new("RGB", (4096, 4096), (50, 60, 70)))
    output = handle({"id": "big-init", "input": i2i(init_images=[big], resize_mode=3)})
    if "error" in output:
        problems = runpod_refusal_problems(output, ("init_images",))
        assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- fuzz

VALID_SAMPLERS = ["Euler", "Euler a", "DDIM", "DPM++ 2M", "k_lms", "DPM++ 2M Karras", "UniPC", "Heun"]
JUNK_STRINGS = ["", " ", "None", "null", "NaN", LONE_SURROGATE, "\x00", "../../etc/passwd", "<lora:x:1>",
                "A" * 3000, "Automatic", "Karras", "Latent", "Lanczos", "Use same sampler", "DPM fast"]
HOSTILE_PROMPTS = ["(" * 300, "[" * 300, ")" * 50, "(a:nan)", "(a:inf)", "(a:1e400)", "(a:-1e308)", "(a:1.2.3)",
                   "<lora:x:1>", "<lora:a:b:c:d:e>", "<lyco:x:nan>", "<lora::1>", "<x:y>", "BREAK BREAK BREAK",
                   "a AND b :1e309", "a AND :nan", "[a:b:1e30]", "[a:b:-1]", "[a:b:nan]", "[a|b|]", "\\", "a\\",
                   "{a|b}", LONE_SURROGATE, "a\x00b", "\u202e", "[" + "a:" * 200, "(" * 40 + "x" + ")" * 40,
                   "a" + " " * 300 + "b", "AND", ":", "(:1)", "[:]"]
WRONG_TYPES = st.one_of(st.none(), st.lists(st.integers(0, 3), max_size=2),
                        st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2),
                        st.text(alphabet="abcxyz-", max_size=6))
ANY_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                      st.sampled_from([NAN, INF, -INF, 1e308, -1e308, 5e-324, -0.0, 0.0, 1e6, -1.0]))
NON_FINITE = st.sampled_from([NAN, INF, -INF])  # valid JSON for Python's json module; no schema bound on some fields
BAD_INTS = [-(2**63), -1, 0, 2**31, 2**63, 2**64 + 5, 10**9, 10**30]


def mixed(valid, *invalid) -> st.SearchStrategy:
    """Mostly valid values (so that many bodies are served), else invalid or wrongly typed ones."""
    return st.one_of(valid, valid, valid, st.one_of(*invalid, WRONG_TYPES))


FIELD_STRATEGIES: dict[str, st.SearchStrategy] = {
    "prompt": mixed(st.text(max_size=30), st.sampled_from(HOSTILE_PROMPTS), st.integers()),
    "negative_prompt": mixed(st.text(max_size=20), st.sampled_from(HOSTILE_PROMPTS)),
    "width": mixed(st.just(64), st.sampled_from([0, -64, 63, 65, 4096, 10**9, 2**64, 64.5]), ANY_FLOAT),
    "height": mixed(st.just(64), st.sampled_from([0, -64, 63, 65, 4096, 10**9, 2**64, 64.5]), ANY_FLOAT),
    "steps": mixed(st.sampled_from([1, 2]), st.sampled_from([0, -1, 151, 10**9, 1.5]), ANY_FLOAT),
    "seed": mixed(st.integers(-1, 2**32 - 1), st.integers(-(2**70), 2**70), ANY_FLOAT),
    "subseed": mixed(st.integers(-1, 2**32 - 1), st.integers(-(2**70), 2**70), ANY_FLOAT),
    "subseed_strength": mixed(st.floats(0, 1), ANY_FLOAT),
    "cfg_scale": mixed(st.floats(1, 30), ANY_FLOAT),
    "eta": mixed(st.sampled_from([None, 0, 1]), NON_FINITE, ANY_FLOAT),
    "s_tmax": mixed(st.sampled_from([None, 0, INF]), NON_FINITE, ANY_FLOAT),
    "s_noise": mixed(st.sampled_from([None, 1]), NON_FINITE, ANY_FLOAT),
    "refiner_switch_at": mixed(st.sampled_from([None, 0.8]), NON_FINITE, ANY_FLOAT),
    "denoising_strength": mixed(st.floats(0, 1), ANY_FLOAT),
    "sampler_name": mixed(st.sampled_from(VALID_SAMPLERS), st.sampled_from(JUNK_STRINGS), st.integers()),
    "scheduler": mixed(st.sampled_from(["Automatic", "Karras", "Exponential", None]), st.sampled_from(JUNK_STRINGS)),
    "sampler_index": mixed(st.sampled_from(VALID_SAMPLERS), st.sampled_from(JUNK_STRINGS)),
    "batch_size": mixed(st.just(1), st.sampled_from([0, 9, *BAD_INTS])),
    "n_iter": mixed(st.just(1), st.sampled_from([0, 101, *BAD_INTS])),
    "restore_faces": mixed(st.sampled_from([None, False]), st.just(True)),
    "tiling": mixed(st.booleans(), st.just("sometimes")),
    "send_images": mixed(st.booleans(), st.just(2)),
    "disable_extra_networks": mixed(st.booleans(), st.just("x")),
    "override_settings": mixed(
        st.one_of(st.none(), st.dictionaries(
            st.sampled_from(["CLIP_stop_at_last_layers", "eta_noise_seed_delta", "sd_vae", "samples_format",
                             "jpeg_quality", "sd_model_checkpoint", "img2img_fix_steps", "face_restoration",
                             "code_former_weight", "not_an_option"]),
            st.sampled_from([None, 0, 1, 2, 12, 99, -1, 2**64 + 5, NAN, INF, "Automatic", "None", "png", "jpg", "gif",
                             "tiny-sd15", "../x", LONE_SURROGATE, True, [], {}]), max_size=3)),
        st.just("x")),
    "override_settings_restore_afterwards": st.sampled_from([True, None, "abc", [], {}, 2, 0.5]),
    "styles": st.sampled_from([None, [], ["x"], "x"]),
    "script_name": st.sampled_from([None, "", "None", "x/../y"]),
    "alwayson_scripts": st.sampled_from([{}, {"x": {}}, "x"]),
    "comments": st.sampled_from([None, {"a": "b"}, {"a": NAN}, {"a": [INF]}, "x"]),
    "delivery": st.sampled_from([{"mode": "base64"}, {"mode": "s3"}, {"mode": "ftp"}, "s3", 5, {"bucket": "ab"},
                                 {"prefix": "x" * 600}, None]),
    "hires": st.fixed_dictionaries({"enable_hr": mixed(st.booleans(), st.just("on!"))}, optional={
        "hr_scale": st.sampled_from([1, 1.5, 2, 0, -1, NAN, INF, 9, 1e9, "2x"]),
        "hr_resize_x": st.sampled_from([0, 64, 128, -1, 4097, 10**9, "x"]),
        "hr_resize_y": st.sampled_from([0, 64, 128, -1, 4097, 10**9, "x"]),
        "hr_upscaler": st.sampled_from([None, "Latent", "Latent (nearest)", "Lanczos", "Nearest", *JUNK_STRINGS]),
        "hr_second_pass_steps": st.sampled_from([0, 1, 2, -1, 151, 10**9, "x"]),
        "hr_sampler_name": st.sampled_from([None, "Use same sampler", *VALID_SAMPLERS, *JUNK_STRINGS]),
        "hr_scheduler": st.sampled_from([None, "Use same scheduler", "Karras", *JUNK_STRINGS]),
        "hr_prompt": st.sampled_from(["", *HOSTILE_PROMPTS]),
        "denoising_strength": mixed(st.floats(0, 1), ANY_FLOAT),
    }),
    # (w, h) pairs only: one huge side with a small other one would really allocate gigabytes
    "seed_resize": st.sampled_from([(-1, -1), (64, 64), (128, 32), (0, 10**9), (10**9, 10**9), (2**63, 2**63),
                                    ("x", 64), (NAN, 64), (-5, 64)]),
}
IMG2IMG_STRATEGIES: dict[str, st.SearchStrategy] = {
    "init_images": mixed(st.just([PNG64]), st.sampled_from([[PNG64, PNG_OTHER_SIZE], [BAD_BASE64], [], [BOMB],
                                                            [TRUNCATED_PNG], [PNG_GARBAGE_EXIF], [FILE_URL], PNG64])),
    "mask": mixed(st.sampled_from([None, MASK64]), st.sampled_from([BAD_BASE64, BOMB, TRUNCATED_PNG, 5])),
    "resize_mode": mixed(st.sampled_from([0, 1, 2, 3]), st.sampled_from([-1, 4, 10**9, NAN])),
    "inpainting_fill": mixed(st.sampled_from([0, 1, 2, 3]), st.sampled_from([-1, 4])),
    "mask_blur": mixed(st.sampled_from([None, 0, 4]), st.sampled_from([-1, 65, NAN])),
    "inpaint_full_res": mixed(st.booleans(), st.just("x")),
    "inpaint_full_res_padding": mixed(st.sampled_from([0, 32]), st.sampled_from([-1, 10**9])),
    "image_cfg_scale": mixed(st.sampled_from([None, 1.5]), NON_FINITE, ANY_FLOAT),
    "initial_noise_multiplier": mixed(st.sampled_from([None, 1.0]), NON_FINITE, ANY_FLOAT),
}


IMAGES = st.sampled_from([PNG64, PNG_OTHER_SIZE, BAD_BASE64, BOMB, TRUNCATED_PNG, PNG_GARBAGE_EXIF, FILE_URL,
                          PNG_BACKSLASH_INFOTEXT, DATA_URI_NOT_IMAGE, "", LONE_SURROGATE, 5, None])
EXTRAS_STRATEGIES: dict[str, st.SearchStrategy] = {
    "image": mixed(st.just(PNG64), IMAGES),
    "resize_mode": mixed(st.sampled_from([0, 1]), st.sampled_from([2, -1, NAN])),
    "upscaling_resize": mixed(st.sampled_from([1, 1.5, 2]), st.sampled_from([0, -1, 9, 1e9]), ANY_FLOAT),
    "upscaling_resize_w": mixed(st.sampled_from([64, 128]), st.sampled_from([0, -1, 8193, 10**9])),
    "upscaling_resize_h": mixed(st.sampled_from([64, 128]), st.sampled_from([0, -1, 8193, 10**9])),
    "upscaling_crop": mixed(st.booleans(), st.just("x")),
    "upscaler_1": mixed(st.sampled_from(["None", "Lanczos", "Nearest"]), st.sampled_from(JUNK_STRINGS)),
    "upscaler_2": mixed(st.sampled_from(["None", "Lanczos", "Nearest"]), st.sampled_from(JUNK_STRINGS)),
    "extras_upscaler_2_visibility": mixed(st.floats(0, 1), ANY_FLOAT),
    "gfpgan_visibility": mixed(st.just(0), ANY_FLOAT),
    "codeformer_visibility": mixed(st.just(0), ANY_FLOAT),
    "codeformer_weight": mixed(st.floats(0, 1), ANY_FLOAT),
}


@st.composite
def fuzz_requests(draw) -> tuple[str, dict[str, Any]]:
    endpoint = draw(st.sampled_from(["txt2img", "txt2img", "txt2img", "img2img", "img2img", "extra-single-image",
                                     "png-info"]))
    if endpoint == "png-info":
        return endpoint, draw(st.fixed_dictionaries({}, optional={"image": IMAGES, "junk": WRONG_TYPES}))
    if endpoint == "extra-single-image":
        body = {"image": PNG64, "upscaling_resize": 1}
        for name in draw(st.lists(st.sampled_from(sorted(EXTRAS_STRATEGIES)), max_size=4, unique=True)):
            body[name] = draw(EXTRAS_STRATEGIES[name])
        return endpoint, body
    body: dict[str, Any] = {"prompt": "fuzz", "width": 64, "height": 64, "steps": 1,
                            "seed": draw(st.integers(0, 2**32 - 1))}
    table = {**FIELD_STRATEGIES, **(IMG2IMG_STRATEGIES if endpoint == "img2img" else {})}
    if endpoint == "img2img":
        body["init_images"] = [PNG64]
    for name in draw(st.lists(st.sampled_from(sorted(table)), max_size=5, unique=True)):
        value = draw(table[name])
        if name == "hires":
            body.update(value)
        elif name == "seed_resize":
            body["seed_resize_from_w"], body["seed_resize_from_h"] = value
        elif value is not None or name not in ("mask",):
            body[name] = value
    return endpoint, body


FUZZ_EXAMPLES = 200


def test_fuzz_http(engine, client, baseline):
    """Seeded, bounded fuzz of txt2img/img2img bodies: never a 5xx, always a JSON body, the options
    untouched; afterwards the good request gives the same bytes. Every distinct failure is collected
    (with one example body) rather than stopping at the first, so the report shows all of them."""
    failures: dict[tuple, tuple[str, dict]] = {}
    counts = {"served": 0, "refused": 0}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(request=fuzz_requests())
    def run(request):
        endpoint, body = request
        guard = OptionsGuard(engine)
        response = http_send(client, "POST", endpoint, body)
        problems = []
        if response.status_code >= 500:
            try:
                detail = response.json()
                kind = (detail.get("error"), detail.get("detail", "")[:50])
            except ValueError:
                kind = ("not JSON", response.text[:50])
            problems.append((f"{response.status_code}",) + kind)
        try:
            strict_json(response.content)
        except ValueError:
            problems.append(("body not JSON", response.text[:60]))
        if guard.leak():
            problems.append(("options changed",))
        counts["served" if response.status_code == 200 else "refused"] += 1
        if response.status_code == 200 and endpoint in ("txt2img", "img2img"):
            images = response.json().get("images") or []
            if any(not Image.open(io.BytesIO(base64.b64decode(i))).convert("L").getextrema()[1] for i in images[:1]):
                problems.append(("200 with an all-black image (NaN latents?)",))
        for problem in problems:
            key = tuple("".join("#" if c.isdigit() else c for c in str(p)) for p in problem)
            failures.setdefault(key, (endpoint, body))

    run()
    leaked_image = good_via_http(client) != baseline
    report = [f"{' | '.join(key)}\n    e.g. {endpoint}: {short(json.dumps(body, allow_nan=True), 400)}"
              for key, (endpoint, body) in failures.items()]
    if leaked_image:
        report.append("the good request's image changed after the fuzz")
    assert counts["served"] >= 20, f"too few valid bodies to exercise generation: {counts}"
    summary = f"{len(failures)} distinct failures in {FUZZ_EXAMPLES} examples ({counts}):\n"
    assert not report, summary + "\n".join(report)
