"""Request bodies as A1111 1.10 and its clients send them (facts from its modules/api/models.py and the
processing classes it builds its request models from).

A1111 builds StableDiffusionTxt2ImgProcessingAPI / Img2ImgProcessingAPI from the processing classes'
parameters, each typed Optional with the parameter's default, and adds a few API fields
(sampler_index, script_name, ...). Its OpenAPI schema shows a field's default unless that is None.
"""

from __future__ import annotations

from typing import Any

# The fields both request models have, in A1111's order, with A1111's defaults.
_SHARED: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "styles": None,
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": None,
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 50,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": None,
    "tiling": None,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": None,
    "denoising_strength": None,
    "s_min_uncond": None,
    "s_churn": None,
    "s_tmax": None,
    "s_tmin": None,
    "s_noise": None,
    "override_settings": None,
    "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "disable_extra_networks": False,
    "firstpass_image": None,
    "comments": None,
}

# The fields A1111's API adds to both models (img2img also has include_init_images).
_API_FIELDS: dict[str, Any] = {
    "sampler_index": "Euler",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
}

# StableDiffusionTxt2ImgProcessingAPI: every field with its default.
A1111_TXT2IMG: dict[str, Any] = {
    **_SHARED,
    "enable_hr": False,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2.0,
    "hr_upscaler": None,
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_checkpoint_name": None,
    "hr_sampler_name": None,
    "hr_scheduler": None,
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "force_task_id": None,
    **_API_FIELDS,
    "infotext": None,
}

# StableDiffusionImg2ImgProcessingAPI: every field with its default. init_images defaults to null, which
# A1111's endpoint then refuses ("Init image not found"): a client always sends them.
A1111_IMG2IMG: dict[str, Any] = {
    **_SHARED,
    "init_images": None,
    "resize_mode": 0,
    "denoising_strength": 0.75,
    "image_cfg_scale": None,
    "mask": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "mask_blur": None,
    "mask_round": True,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None,
    "latent_mask": None,
    "force_task_id": None,
    **_API_FIELDS,
    "include_init_images": False,
    "infotext": None,
}

# The full txt2img parameter list as A1111's documentation shows it: every field, null where the model's
# default is None and for negative_prompt.
DOCUMENTED_TXT2IMG: dict[str, Any] = {**A1111_TXT2IMG, "negative_prompt": None}

# Fields whose null A1111 refuses: API fields typed without Optional (and, for init_images, its endpoint).
# Every other field takes null as its default.
TXT2IMG_NULL_REFUSED = frozenset({"sampler_index", "script_args", "send_images", "save_images", "alwayson_scripts"})
IMG2IMG_NULL_REFUSED = TXT2IMG_NULL_REFUSED | {"init_images", "denoising_strength", "include_init_images"}


def openapi_defaults(model: dict[str, Any]) -> dict[str, Any]:
    """The body built from the defaults A1111's OpenAPI schema shows: the fields whose default is not None."""
    return {field: default for field, default in model.items() if default is not None}


def all_null(model: dict[str, Any], refused: frozenset[str]) -> dict[str, Any]:
    """A body with every field A1111 accepts null for set to null."""
    return {field: None for field in model if field not in refused}
