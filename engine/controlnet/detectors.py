"""The weightless preprocessors' image functions, computed as sd-webui-controlnet computes them (OpenCV, uint8).

Each takes (image, resolution, threshold_a, threshold_b), the sliders already resolved, and returns the detected
map as an RGB image. The extension's resizing: most modules first scale the image so that its short side is
the resolution (bicubic up, area down, sizes rounded), pad it with its edge pixels to multiples of 64, detect on
that, and crop the padding off the map; so the map has the scaled size. Modules without a resolution slider
(invert, tile_resample, recolor, inpaint) keep the input's size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..imaging.image_ops import opencv

PAD_MULTIPLE = 64


def hwc3(image: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 RGB, as the extension's HWC3: grey repeated, transparency composited over white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        return (rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def to_image(pixels: np.ndarray) -> Image.Image:
    """An RGB image of an H x W or H x W x 3 uint8 array (HWC3 of a single channel: the channel repeated)."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def scaled_size(width: int, height: int, resolution: float) -> tuple[int, int]:
    """(width, height) with the short side scaled to `resolution`, each rounded half to even as numpy rounds."""
    k = float(resolution) / min(width, height)
    return int(np.round(width * k)), int(np.round(height * k))


def resize_with_pad(image: Image.Image, resolution: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The image scaled to its short side `resolution`, edge-padded to multiples of 64 (right and bottom), and
    the scaled (height, width) to crop its map back to."""
    cv2 = opencv()
    pixels = hwc3(image)
    height, width = pixels.shape[:2]
    new_width, new_height = scaled_size(width, height, resolution)
    upscale = resolution > min(width, height)
    pixels = cv2.resize(pixels, (new_width, new_height), interpolation=cv2.INTER_CUBIC if upscale else cv2.INTER_AREA)
    pad = [(0, -new_height % PAD_MULTIPLE), (0, -new_width % PAD_MULTIPLE), (0, 0)]
    return np.pad(pixels, pad, mode="edge"), (new_height, new_width)


def _crop(pixels: np.ndarray, size: tuple[int, int]) -> Image.Image:
    return to_image(pixels[:size[0], :size[1]])


def passthrough(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """none, and the inpaint modules: the image itself (for inpaint, the engine takes the mask beside it)."""
    return to_image(hwc3(image))


def canny(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """OpenCV's Canny edges (white on black), low and high hysteresis thresholds a and b (as integers)."""
    cv2 = opencv()
    pixels, size = resize_with_pad(image, resolution)
    return _crop(cv2.Canny(pixels, int(threshold_a), int(threshold_b)), size)


def invert(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """255 - the image, at its own size: black lines on white become the white-on-black lines ControlNets take."""
    return to_image(255 - hwc3(image))


def threshold(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """White where every channel is above threshold a, black elsewhere."""
    pixels, size = resize_with_pad(image, resolution)
    return _crop(np.where(pixels.min(axis=2) > threshold_a, 255, 0).astype(np.uint8), size)


def blur_gaussian(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """A Gaussian blur of sigma a (the kernel size OpenCV derives from sigma) of the scaled, unpadded image."""
    cv2 = opencv()
    pixels, size = resize_with_pad(image, resolution)
    return to_image(cv2.GaussianBlur(pixels[:size[0], :size[1]], (0, 0), float(threshold_a)))


def scribble_xdog(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """Scribble lines from a difference of Gaussians (sigmas 0.5 and 5): white where twice the DoG's strongest
    darkening (over the channels, clipped to 0..255), modulo 256 as the extension's uint8, exceeds threshold a."""
    cv2 = opencv()
    pixels, size = resize_with_pad(image, resolution)
    floats = pixels.astype(np.float32)
    fine, coarse = cv2.GaussianBlur(floats, (0, 0), 0.5), cv2.GaussianBlur(floats, (0, 0), 5.0)
    darkening = 255 - (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8).astype(np.int32)
    doubled = 2 * darkening % 256  # the extension doubles in uint8, which wraps: darkening 128..255 drops by 256
    return _crop(np.where(doubled > threshold_a, 255, 0).astype(np.uint8), size)


def tile_resample(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """The image shrunk by the factor a (area interpolation, sizes truncated); unchanged below a factor of 1.1.
    The resolution is not used: the tile model's input is scaled to the generation's size afterwards."""
    cv2 = opencv()
    pixels = hwc3(image)
    if threshold_a < 1.1:
        return to_image(pixels)
    height, width = pixels.shape[:2]
    size = (int(width / float(threshold_a)), int(height / float(threshold_a)))
    return to_image(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))


def lineart_standard(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """Lines as how much darker each pixel is than its blurred surround (sigma 6, darkest channel), scaled so
    that the median line (of those above 8) reads 127; white lines on black from black lines on white."""
    cv2 = opencv()
    pixels, size = resize_with_pad(image, resolution)
    floats = pixels.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(floats, (0, 0), 6.0) - floats, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity = intensity / max(16.0, float(np.median(lines)) if lines.size else 0.0) * 127
    return _crop(intensity.clip(0, 255).astype(np.uint8), size)


def _recolor(image: Image.Image, gamma: float, conversion: int, channel: int) -> Image.Image:
    cv2 = opencv()
    # the extension converts its RGB array with OpenCV's BGR codes: the same here, for the same lightness
    value = cv2.cvtColor(hwc3(image), conversion)[..., channel].astype(np.float32) / 255.0
    return to_image((value ** gamma * 255.0).clip(0, 255).astype(np.uint8))


def recolor_luminance(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """Grey lightness (L of L*a*b*) with gamma a, at the image's size: the input of recolor ControlNets."""
    cv2 = opencv()
    return _recolor(image, float(threshold_a), cv2.COLOR_BGR2LAB, 0)


def recolor_intensity(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
    """Grey value (V of HSV, the brightest channel) with gamma a, at the image's size."""
    cv2 = opencv()
    return _recolor(image, float(threshold_a), cv2.COLOR_BGR2HSV, 2)


def inpaint_display_map(image: Image.Image, mask: Image.Image) -> Image.Image:
    """How the extension shows an inpaint module's map (/controlnet/detect): the image, with alpha
    255 - mask // 2, so the masked area is half transparent. `mask` is an L image of the image's size."""
    rgba = hwc3(image)
    alpha = 255 - np.asarray(mask.convert("L"), dtype=np.uint8) // 2
    return Image.fromarray(np.dstack([rgba, alpha]), "RGBA")
