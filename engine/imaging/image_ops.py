"""Pixel-space helpers for img2img and inpainting, matching A1111 v1.10's behaviour.

The img2img resize modes, reading an API mask (white = repaint), mask invert and blur, the
"only masked" (inpaint_full_res) crop box and its paste-back, the "fill" masked-content mode and
putting the original pixels back outside the mask. Pillow and numpy only; nothing here touches
latents.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

Box = tuple[int, int, int, int]  # (x1, y1, x2, y2), x2 and y2 exclusive

RESIZE_JUST_RESIZE = 0
RESIZE_CROP_AND_RESIZE = 1
RESIZE_AND_FILL = 2
RESIZE_LATENT = 3

_LANCZOS = Image.Resampling.LANCZOS
_ALPHA_THRESHOLD = 128  # an alpha mask repaints where alpha > this
# (blur radius, times composited) for fill_masked, widest first; radius 0 is the sharp image
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


# --- resizing -------------------------------------------------------------------------------------

def opencv():
    """OpenCV, imported on first use: a worker that never detects faces or runs a ControlNet preprocessor never
    imports it."""
    import cv2

    return cv2


def resize_image(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    """Resize (Lanczos) for img2img with A1111's resize_mode; RGB of exactly width x height.

    0 just resize (stretch), 1 crop and resize (cover, centre crop), 2 resize and fill (fit,
    centred, bands filled from the edges), 3 latent upscale: a plain stretch in pixel space.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive (got {width}x{height})")
    image = image.convert("RGB")
    if mode in (RESIZE_JUST_RESIZE, RESIZE_LATENT):
        return image.resize((width, height), _LANCZOS)
    if mode == RESIZE_CROP_AND_RESIZE:
        return _crop_and_resize(image, width, height)
    if mode == RESIZE_AND_FILL:
        return _resize_and_fill(image, width, height)
    raise ValueError(f"resize mode must be 0, 1, 2 or 3 (got {mode!r})")


def _scaled_size(image: Image.Image, width: int, height: int, cover: bool) -> tuple[int, int]:
    """The image's size scaled, aspect kept, to cover (or fit inside) width x height.

    One side equals the target; the other is floored as A1111 does (never below 1 pixel).
    """
    target_wider = width * image.height > image.width * height
    # covering matches the target's width when the target is the wider shape; fitting, the opposite
    if target_wider == cover:
        return width, max(1, image.height * width // image.width)
    return max(1, image.width * height // image.height), height


def _crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    scaled_w, scaled_h = _scaled_size(image, width, height, cover=True)
    scaled = image.resize((scaled_w, scaled_h), _LANCZOS)
    left = scaled_w // 2 - width // 2
    top = scaled_h // 2 - height // 2
    return scaled.crop((left, top, left + width, top + height))


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    scaled_w, scaled_h = _scaled_size(image, width, height, cover=False)
    scaled = image.resize((scaled_w, scaled_h), _LANCZOS)
    left = width // 2 - scaled_w // 2
    top = height // 2 - scaled_h // 2
    out = Image.new("RGB", (width, height))
    out.paste(scaled, (left, top))
    if scaled_h < height:  # bands above and below
        _paste_band(out, scaled, "top", (0, 0), (width, top))
        _paste_band(out, scaled, "bottom", (0, top + scaled_h), (width, height - top - scaled_h))
    if scaled_w < width:  # bands left and right
        _paste_band(out, scaled, "left", (0, 0), (left, height))
        _paste_band(out, scaled, "right", (left + scaled_w, 0), (width - left - scaled_w, height))
    return out


def _paste_band(out: Image.Image, scaled: Image.Image, side: str, at: tuple[int, int],
                size: tuple[int, int]) -> None:
    """Fill a band of `out` by stretching one edge of `scaled` across it.

    The source box has zero thickness on the edge, so the resampling filter reads just the
    outermost two rows (or columns). A1111 leaves Pillow's default filter (bicubic) here, and so
    does this, to give the same pixels.
    """
    if size[0] <= 0 or size[1] <= 0:
        return
    w, h = scaled.size
    edge = {"top": (0, 0, w, 0), "bottom": (0, h, w, h),
            "left": (0, 0, 0, h), "right": (w, 0, w, h)}[side]
    out.paste(scaled.resize(size, Image.Resampling.BICUBIC, box=edge), at)


# --- masks ----------------------------------------------------------------------------------------

def mask_from_image(mask: Image.Image, *, mask_round: bool = True) -> Image.Image:
    """The API mask as an "L" image, white = repaint.

    An image with any transparency (RGBA, LA, PA, or a palette/colour key) is read from its alpha:
    255 where alpha > 128, else 0 (mask_round=False keeps the raw alpha). Otherwise grayscale.
    """
    if mask.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in mask.info:
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            if mask_round:
                return alpha.point([255 if v > _ALPHA_THRESHOLD else 0 for v in range(256)])
            return alpha
    return mask.convert("L")


def prepare_mask(mask: Image.Image, blur_x: int, blur_y: int, invert: bool) -> Image.Image:
    """Invert (inpainting_mask_invert) then Gaussian-blur along x and along y, as A1111 does.

    A blur value is the Gaussian's sigma; the kernel reaches int(2.5 * sigma + 0.5) pixels each
    side, borders mirror without repeating the edge pixel, and the result is rounded to 8 bits
    after each direction. A blur <= 0 skips that direction.
    """
    mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    pixels = np.asarray(mask)
    if blur_x > 0:
        pixels = _blur_axis(pixels, blur_x, axis=1)
    if blur_y > 0:
        pixels = _blur_axis(pixels, blur_y, axis=0)
    return Image.fromarray(np.ascontiguousarray(pixels), "L")


def _gaussian_weights(sigma: float) -> np.ndarray:
    reach = int(2.5 * sigma + 0.5)
    offsets = np.arange(-reach, reach + 1, dtype=np.float64)
    weights = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def _blur_axis(pixels: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """A uint8 array blurred along one axis (reflect-101 borders, round half up)."""
    weights = _gaussian_weights(sigma)
    reach = len(weights) // 2
    lines = np.moveaxis(pixels.astype(np.float64), axis, -1)
    n = lines.shape[-1]
    padded = np.pad(lines, [(0, 0)] * (lines.ndim - 1) + [(reach, reach)], mode="reflect")
    total = np.zeros_like(lines)
    for k, weight in enumerate(weights):
        total += weight * padded[..., k:k + n]
    rounded = np.clip(np.floor(total + 0.5), 0, 255).astype(np.uint8)
    return np.moveaxis(rounded, -1, axis)


# --- "only masked" crop box -----------------------------------------------------------------------

def crop_region(mask: Image.Image, padding: int) -> Box | None:
    """Bounding box of the mask's non-zero pixels, grown by `padding` (>= 0) and kept inside the
    image; None for an all-black mask."""
    mask = mask.convert("L")
    bbox = mask.getbbox()
    if bbox is None:
        return None
    pad = max(0, int(padding))
    x1, y1, x2, y2 = bbox
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand_to_aspect(box: Box, width: int, height: int, image_width: int,
                     image_height: int) -> Box:
    """Grow `box` (never shrink it) to the aspect ratio width:height, as A1111's expand_crop_region.

    The short side grows evenly on both ends, is shifted back inside the image where it would
    leave it, and is cut at the image edge when the image is too small for the full growth.
    """
    x1, y1, x2, y2 = box
    box_w, box_h = x2 - x1, y2 - y1
    if box_w <= 0 or box_h <= 0:
        raise ValueError(f"empty box {box!r}")
    target = width / height
    if box_w / box_h > target:
        y1, y2 = _grow_span(y1, y2, int(box_w / target - box_h), image_height)
    else:
        x1, x2 = _grow_span(x1, x2, int(box_h * target - box_w), image_width)
    return x1, y1, x2, y2


def _grow_span(start: int, end: int, grow: int, limit: int) -> tuple[int, int]:
    """[start, end) grown by `grow` (half before, the rest after), then moved/clipped into [0, limit]."""
    start -= grow // 2
    end += grow - grow // 2
    if end > limit:  # slide back from the far edge
        start, end = start - (end - limit), limit
    if start < 0:  # slide back from the near edge
        start, end = 0, end - start
    return start, min(end, limit)


# --- fill, overlay, paste -------------------------------------------------------------------------

def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """inpainting_fill 0: masked pixels replaced by colours spread in from around the mask.

    The unmasked part (weighted by 1 - mask) is blurred at decreasing radii and the layers are
    stacked "over" one another, sharpest last, like A1111's masking.fill; pixels where the mask
    is 0 are returned unchanged. An all-white mask gives black.
    """
    _check_same_size(image, mask)
    original = np.asarray(image.convert("RGB"))
    keep = 1.0 - np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
    # premultiplied colour and alpha of the pixels to keep, on a 0..1 scale
    layer = np.dstack([original / 255.0 * keep[..., None], keep])
    layer_8bit = Image.frombytes("RGBa", image.size,
                                 np.rint(layer * 255.0).astype(np.uint8).tobytes())
    stacked = np.zeros_like(layer)
    for radius, repeats in _FILL_PASSES:
        if radius:
            blurred = np.asarray(layer_8bit.filter(ImageFilter.GaussianBlur(radius)), np.float64) / 255.0
        else:
            blurred = layer
        for _ in range(repeats):
            stacked = blurred + stacked * (1.0 - blurred[..., 3:])
    alpha = stacked[..., 3:]
    colour = np.divide(stacked[..., :3], alpha, out=np.zeros_like(stacked[..., :3]), where=alpha > 0)
    filled = np.clip(np.rint(colour * 255.0), 0, 255).astype(np.uint8)
    filled[keep == 1.0] = original[keep == 1.0]
    return Image.fromarray(filled, "RGB")


def composite_original(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's overlay: original * (1 - m) + generated * m with m = mask / 255, as RGB.

    Where the mask is 0 the original's pixels come back exactly. (A1111 passes the blurred mask
    here for "only masked", and that mask doubled and clipped at 255 for whole-picture inpainting;
    choosing which is the caller's job.)
    """
    _check_same_size(original, generated, mask)
    before = np.asarray(original.convert("RGB"), np.float64)
    after = np.asarray(generated.convert("RGB"), np.float64)
    weight = np.asarray(mask.convert("L"), np.float64)[..., None] / 255.0
    blended = before * (1.0 - weight) + after * weight
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB")


def paste_region(canvas: Image.Image, patch: Image.Image, box: Box) -> Image.Image:
    """A copy of `canvas` with `patch` resized (crop and resize, as A1111) to the box and pasted there."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty box {box!r}")
    fitted = resize_image(patch, x2 - x1, y2 - y1, RESIZE_CROP_AND_RESIZE)
    out = canvas.copy()
    out.paste(fitted, (x1, y1))
    return out


def _check_same_size(*images: Image.Image) -> None:
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"images must be the same size (got {sorted(sizes)})")
