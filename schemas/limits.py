"""Request limits: what one job may ask for, checked before any work starts.

The only place these numbers live. Each one an operator may change has an environment variable,
read once, when this module is first imported (at start); README's "Limits" table lists them.
`SETTINGS` maps each variable to the value in force.
"""

from __future__ import annotations

import os

SETTINGS: dict[str, int] = {}


def _setting(variable: str, default: int) -> int:
    text = os.environ.get(variable, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        raise ValueError(f"{variable} must be a whole number (got {text[:40]!r})") from None
    if value < 1:
        raise ValueError(f"{variable} must be at least 1 (got {value})")
    SETTINGS[variable] = value
    return value


MIN_SIDE = 64
SIDE_MULTIPLE = 8  # the VAE's scale factor: latents are (H/8, W/8)
MAX_SIDE = _setting("WORKER_MAX_SIDE", 2048)  # width, height, seed_resize_from_w/h: A1111's UI maximum
MAX_HIRES_SIDE = _setting("WORKER_MAX_HIRES_SIDE", 4096)  # hires fix output, per side
MAX_STEPS = _setting("WORKER_MAX_STEPS", 150)  # A1111's UI maximum
MAX_BATCH_SIZE = _setting("WORKER_MAX_BATCH_SIZE", 8)  # A1111's UI maximum
MAX_N_ITER = _setting("WORKER_MAX_N_ITER", 100)  # A1111's UI maximum
MAX_IMAGES = _setting("WORKER_MAX_IMAGES", 100)  # batch_size * n_iter; extra-batch-images' imageList
MIN_CFG_SCALE = 1.0
MAX_CFG_SCALE = 30.0
SEED_RANGE = 4294967294  # -1 picks a seed in [0, SEED_RANGE), as A1111 does
MAX_SEED_DELTA = 2**32 - 1  # eta_noise_seed_delta: seed + delta stays a valid generator seed

# prompts (each of prompt, negative_prompt, hr_prompt, hr_negative_prompt)
MAX_PROMPT_CHARS = _setting("WORKER_MAX_PROMPT_CHARS", 20_000)  # checked first, before tokenizing
MAX_PROMPT_CHUNKS = _setting("WORKER_MAX_PROMPT_CHUNKS", 20)  # 75-token chunks (BREAK starts one)
MAX_SUBPROMPTS = _setting("WORKER_MAX_SUBPROMPTS", 16)  # AND parts: each is one more UNet input per step
MAX_PROMPT_NESTING = 32  # brackets inside brackets: emphasis costs a pass over the group's text per level
MAX_PROMPT_WEIGHT = 100  # emphasis (x:w) and AND weights: larger ones overflow the (fp16) text encoder output
MAX_INFOTEXT_CHARS = _setting("WORKER_MAX_INFOTEXT_CHARS", 50_000)  # the `infotext` request field
MAX_STYLES = _setting("WORKER_MAX_STYLES", 20)  # prompt styles a request names (each is merged into the prompts)

# images sent in a request (init_images, mask, extras' image and imageList, png-info)
MAX_INPUT_PIXELS = _setting("WORKER_MAX_INPUT_PIXELS", 4096 * 4096)  # width * height, read from the header
MAX_EXTRAS_SIDE = _setting("WORKER_MAX_EXTRAS_SIDE", 8192)  # an extras result, per side
MAX_UPSCALE = 8  # A1111's UI maximum for upscaling_resize; also SD upscale's scale_factor (A1111's UI: 4)

# built-in scripts (script_name)
MAX_PROMPT_LINES = _setting("WORKER_MAX_PROMPT_LINES", 100)  # "Prompts from file or textbox": non-empty lines
MAX_SD_UPSCALE_TILES = _setting("WORKER_MAX_SD_UPSCALE_TILES", 100)  # "SD upscale": tiles x n_iter
MAX_CONTROLNET_UNITS = _setting("WORKER_MAX_CONTROLNET_UNITS", 4)  # alwayson_scripts.controlnet.args

# the request as a whole
MAX_NESTING = 32  # JSON arrays and objects inside each other
MAX_REQUEST_MB = _setting("WORKER_MAX_REQUEST_MB", 64)  # an HTTP request body (RunPod caps its own at 10-20 MB)
