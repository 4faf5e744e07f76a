"""engine.imaging.image_ops: img2img resize modes, mask reading/invert/blur, the "only masked" crop box,
masked-content fill, compositing the original back and pasting the crop back."""

import numpy as np
import pytest
from PIL import Image

from engine.imaging.image_ops import (
    composite_original,
    crop_region,
    expand_to_aspect,
    fill_masked,
    mask_from_image,
    paste_region,
    prepare_mask,
    resize_image,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(size, colour, mode="RGB"):
    return Image.new(mode, size, colour)


def gradient(width, height):
    """R rises left to right, G top to bottom, B constant."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    pixels = np.dstack([x, y, np.full_like(x, 90)]).round().astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def stripes(size, bounds, colours, vertical=True):
    """Bands of solid colour: along x (vertical stripes) or along y, split at `bounds`."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    edges = [0, *bounds, width if vertical else height]
    for (start, end), colour in zip(zip(edges, edges[1:]), colours):
        if vertical:
            pixels[:, start:end] = colour
        else:
            pixels[start:end, :] = colour
    return Image.fromarray(pixels, "RGB")


def square_mask(size=(40, 30), box=(10, 5, 20, 15), value=255):
    mask = Image.new("L", size, 0)
    mask.paste(value, box)
    return mask


def px(image):
    return np.asarray(image).astype(int)


# --- resize_image ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("source", [(30, 60), (80, 40), (50, 50), (7, 101)])
@pytest.mark.parametrize("target", [(64, 48), (48, 64), (33, 17), (40, 40)])
def test_resize_gives_exact_rgb_size(mode, source, target):
    out = resize_image(gradient(*source), *target, mode)
    assert out.size == target
    assert out.mode == "RGB"


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_resize_converts_other_modes_to_rgb(mode):
    for image in (solid((20, 10), 128, "L"), solid((20, 10), (1, 2, 3, 0), "RGBA")):
        out = resize_image(image, 16, 16, mode)
        assert out.mode == "RGB" and out.size == (16, 16)


def test_resize_rejects_unknown_mode_and_empty_size():
    with pytest.raises(ValueError):
        resize_image(gradient(10, 10), 8, 8, 4)
    with pytest.raises(ValueError):
        resize_image(gradient(10, 10), 0, 8, 0)


def test_just_resize_stretches_the_whole_image():
    image = stripes((40, 20), [20], [RED, BLUE])
    out = px(resize_image(image, 20, 40, 0))
    assert (out[:, 0] == RED).all() and (out[:, -1] == BLUE).all()
    assert np.array_equal(out, px(image.resize((20, 40), Image.Resampling.LANCZOS)))


def test_latent_mode_is_just_resize_in_pixel_space():
    image = gradient(50, 30)
    assert np.array_equal(px(resize_image(image, 32, 48, 3)), px(resize_image(image, 32, 48, 0)))


def test_crop_and_resize_keeps_the_centre_and_cuts_the_sides():
    # landscape into square: scaled to 60x20, the centre 20 columns (all green) are kept
    image = stripes((180, 60), [50, 130], [RED, GREEN, BLUE])
    out = px(resize_image(image, 20, 20, 1))
    assert np.abs(out - GREEN).max() <= 2
    stretched = px(resize_image(image, 20, 20, 0))
    assert (stretched[:, 0] == RED).all()  # just resize would keep the red side


def test_crop_and_resize_crops_portrait_top_and_bottom():
    image = stripes((60, 180), [50, 130], [RED, GREEN, BLUE], vertical=False)
    out = px(resize_image(image, 20, 20, 1))
    assert np.abs(out - GREEN).max() <= 2


def test_crop_and_resize_preserves_the_centre_pixel_of_a_gradient():
    image = gradient(101, 51)
    out = px(resize_image(image, 51, 51, 1))  # no scaling needed: a pure centre crop
    assert np.array_equal(out, px(image)[:, 25:76])
    assert np.array_equal(out[25, 25], px(image)[25, 50])


def test_resize_and_fill_shows_the_whole_landscape_image_with_edge_bands():
    image = stripes((60, 30), [5, 25], [RED, GREEN, BLUE], vertical=False)
    out = px(resize_image(image, 60, 60, 2))
    assert np.array_equal(out[15:45], px(image))  # whole image, centred, unscaled
    assert (out[:15] == RED).all()  # top band from the top edge
    assert (out[45:] == BLUE).all()  # bottom band from the bottom edge


def test_resize_and_fill_scales_down_to_fit_and_fills_every_row():
    image = stripes((120, 60), [10, 50], [RED, GREEN, BLUE], vertical=False)
    out = px(resize_image(image, 60, 61, 2))  # odd leftover: 31 rows of bands
    assert np.array_equal(out[15:45], px(image.resize((60, 30), Image.Resampling.LANCZOS)))
    assert (np.abs(out[:15] - RED).max(axis=-1) <= 2).all()
    assert (np.abs(out[45:] - BLUE).max(axis=-1) <= 2).all()  # including the last row


def test_resize_and_fill_bands_extrapolate_the_edge_like_a1111():
    # A1111 stretches a zero-width edge box with Pillow's bicubic filter, which reads the two
    # outermost rows: 1.125 * row0 - 0.125 * row1
    pixels = np.full((20, 40), 150, np.uint8)
    pixels[0], pixels[1] = 100, 200
    pixels[-1], pixels[-2] = 200, 100
    out = px(resize_image(Image.fromarray(pixels, "L"), 40, 40, 2))
    assert np.array_equal(out[10:30, :, 0], pixels)
    assert (np.abs(out[:10] - 87.5) <= 0.5).all()
    assert (np.abs(out[30:] - 212.5) <= 0.5).all()


def test_resize_and_fill_portrait_bands_come_from_the_side_edges():
    image = stripes((30, 60), [5, 25], [RED, GREEN, BLUE])
    out = px(resize_image(image, 61, 60, 2))
    assert np.array_equal(out[:, 15:45], px(image))
    assert (out[:, :15] == RED).all()
    assert (out[:, 45:] == BLUE).all()
    assert out.sum(axis=-1).min() > 0  # nothing left black


# --- mask_from_image ------------------------------------------------------------------------------

def rgba_with_hole(alpha_outside=255, hole_alpha=0):
    """Black RGBA image, opaque except a transparent 10x10 hole at (10, 5)."""
    image = Image.new("RGBA", (40, 30), (0, 0, 0, alpha_outside))
    image.paste((0, 0, 0, hole_alpha), (10, 5, 20, 15))
    return image


def test_rgba_mask_with_transparency_uses_its_alpha():
    mask = mask_from_image(rgba_with_hole())
    assert mask.mode == "L"
    values = px(mask)
    assert (values[5:15, 10:20] == 0).all()  # the transparent hole is kept
    values[5:15, 10:20] = 255
    assert (values == 255).all()  # opaque (even though black) repaints


def test_alpha_mask_threshold_is_above_128():
    assert px(mask_from_image(rgba_with_hole(hole_alpha=128)))[10, 15] == 0
    assert px(mask_from_image(rgba_with_hole(hole_alpha=129)))[10, 15] == 255
    assert px(mask_from_image(rgba_with_hole(alpha_outside=100)))[0, 0] == 0


def test_alpha_mask_without_rounding_keeps_raw_alpha():
    assert px(mask_from_image(rgba_with_hole(hole_alpha=77), mask_round=False))[10, 15] == 77


def test_la_mask_with_transparency_uses_its_alpha():
    image = Image.new("LA", (8, 8), (0, 255))
    image.paste((0, 0), (2, 2, 4, 4))
    values = px(mask_from_image(image))
    assert values[3, 3] == 0 and values[0, 0] == 255


def test_opaque_rgba_mask_uses_grayscale():
    image = Image.new("RGBA", (40, 30), (0, 0, 0, 255))
    image.paste((255, 255, 255, 255), (10, 5, 20, 15))
    assert np.array_equal(px(mask_from_image(image)), px(square_mask()))


def test_rgb_and_l_masks_use_grayscale():
    assert np.array_equal(px(mask_from_image(square_mask().convert("RGB"))), px(square_mask()))
    assert px(mask_from_image(solid((4, 4), (255, 0, 0))))[0, 0] == 76  # luma of red
    assert px(mask_from_image(solid((4, 4), 37, "L")))[0, 0] == 37


# --- prepare_mask ---------------------------------------------------------------------------------

def test_zero_blur_without_invert_is_identity():
    mask = square_mask(value=200)
    out = prepare_mask(mask, 0, 0, False)
    assert out.mode == "L" and np.array_equal(px(out), px(mask))


def test_invert_flips_the_mask():
    assert np.array_equal(px(prepare_mask(square_mask(), 0, 0, True)), 255 - px(square_mask()))


def test_blur_spreads_the_mask_edge():
    mask = square_mask(size=(80, 80), box=(20, 20, 60, 60))
    out = px(prepare_mask(mask, 4, 4, False))
    assert out[40, 40] == 255  # centre, beyond the kernel's reach, untouched
    assert 0 < out[40, 19] < 128 < out[40, 20] < 255  # left edge softened both ways
    assert 0 < out[19, 40] < 128 < out[20, 40] < 255  # top edge too
    assert out[40, 9] == 0 and out[40, 10] > 0  # reach of sigma 4: 10 pixels
    assert out[0, 0] == 0


def test_blur_x_and_blur_y_are_separate():
    mask = square_mask(size=(60, 60), box=(20, 20, 40, 40))
    horizontal = px(prepare_mask(mask, 4, 0, False))
    assert horizontal[30, 18] > 0 and horizontal[18, 30] == 0
    vertical = px(prepare_mask(mask, 0, 4, False))
    assert vertical[18, 30] > 0 and vertical[30, 18] == 0


def test_blur_kernel_reaches_int_2_5_sigma_plus_half():
    # sigma 4: the kernel spans 10 pixels each side, so an impulse reaches 10 but not 11
    mask = Image.new("L", (41, 3), 0)
    mask.putpixel((20, 1), 255)
    row = px(prepare_mask(mask, 4, 0, False))[1]
    weights = np.exp(-np.arange(-10, 11) ** 2 / 32.0)
    expected = np.floor(255 * weights / weights.sum() + 0.5)
    assert np.array_equal(row[10:31], expected)
    assert row[9] == 0 and row[31] == 0  # an untruncated Gaussian would still give 1 here
    assert np.array_equal(row, row[::-1])


def test_blur_mirrors_at_the_border_without_repeating_the_edge():
    # like OpenCV's default border: an impulse on the edge spreads exactly as one inside does
    mask = Image.new("L", (41, 1), 0)
    mask.putpixel((0, 0), 255)
    mask.putpixel((20, 0), 255)
    row = px(prepare_mask(mask, 1.5, 0, False))[0]
    assert row[0] < 255 and np.array_equal(row[0:5], row[20:25])


def test_invert_and_blur_together():
    mask = square_mask(size=(80, 80), box=(20, 20, 60, 60))
    out = px(prepare_mask(mask, 4, 4, True))
    assert out[40, 40] == 0 and out[0, 0] == 255
    assert 0 < out[40, 20] < 128 < out[40, 19] < 255


# --- crop_region / expand_to_aspect ---------------------------------------------------------------

def test_crop_region_is_the_mask_bounding_box():
    assert crop_region(square_mask(), 0) == (10, 5, 20, 15)


def test_crop_region_counts_faint_pixels():
    mask = square_mask()
    mask.putpixel((35, 25), 1)
    assert crop_region(mask, 0) == (10, 5, 36, 26)


def test_crop_region_padding_and_clamping():
    assert crop_region(square_mask(), 3) == (7, 2, 23, 18)
    assert crop_region(square_mask(), 100) == (0, 0, 40, 30)
    corner = square_mask(box=(0, 25, 6, 30))
    assert crop_region(corner, 4) == (0, 21, 10, 30)


def test_crop_region_of_an_empty_mask_is_none():
    assert crop_region(Image.new("L", (40, 30), 0), 8) is None


@pytest.mark.parametrize("box, target, expected", [
    ((10, 10, 30, 20), (64, 64), (10, 5, 30, 25)),  # wide box grows in height, centred
    ((10, 10, 20, 30), (64, 64), (5, 10, 25, 30)),  # tall box grows in width
    ((10, 90, 30, 100), (64, 64), (10, 80, 30, 100)),  # pushed up from the bottom edge
    ((10, 0, 30, 10), (64, 64), (10, 0, 30, 20)),  # pushed down from the top edge
    ((0, 40, 100, 60), (64, 128), (0, 0, 100, 100)),  # image too small: clipped to it
    ((0, 0, 100, 100), (64, 64), (0, 0, 100, 100)),  # already right
])
def test_expand_to_aspect_cases(box, target, expected):
    assert expand_to_aspect(box, *target, 100, 100) == expected


@pytest.mark.parametrize("seed", range(5))
def test_expand_to_aspect_reaches_target_ratio_inside_image(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        image_w, image_h = (int(v) for v in rng.integers(64, 400, 2))
        width, height = (int(v) for v in rng.integers(8, 128, 2) * 8)
        x1, x2 = sorted(int(v) for v in rng.choice(image_w + 1, 2, replace=False))
        y1, y2 = sorted(int(v) for v in rng.choice(image_h + 1, 2, replace=False))
        nx1, ny1, nx2, ny2 = expand_to_aspect((x1, y1, x2, y2), width, height, image_w, image_h)
        assert 0 <= nx1 <= x1 and x2 <= nx2 <= image_w  # contains the box, inside the image
        assert 0 <= ny1 <= y1 and y2 <= ny2 <= image_h
        new_w, new_h = nx2 - nx1, ny2 - ny1
        if new_w < image_w and new_h < image_h:  # not cut by the image: the ratio holds
            # the grown side is the ideal length rounded down: less than one pixel short
            assert 0 <= abs(new_w * height - new_h * width) < max(width, height)


# --- fill_masked ----------------------------------------------------------------------------------

def test_fill_masked_changes_only_masked_pixels_with_nearby_colours():
    image = stripes((64, 64), [32], [RED, BLUE])
    mask = square_mask(size=(64, 64), box=(20, 20, 44, 44))
    out = px(fill_masked(image, mask))
    inside = px(mask) > 0
    assert np.array_equal(out[~inside], px(image)[~inside])
    hole = out[20:44, 20:44]
    assert hole.max(axis=-1).min() > 100  # not black
    assert (hole[..., 1] < 30).all()  # nothing invented: only red and blue nearby
    assert out[32, 21, 0] > out[32, 21, 2]  # red side of the hole is reddish
    assert out[32, 42, 2] > out[32, 42, 0]  # blue side bluish
    assert not np.array_equal(hole, px(image)[20:44, 20:44])


def test_fill_masked_fills_a_hole_in_a_solid_colour_with_that_colour():
    colour = (200, 120, 40)
    mask = square_mask(size=(50, 50), box=(15, 15, 35, 35))
    out = px(fill_masked(solid((50, 50), colour), mask))
    assert np.abs(out - colour).max() <= 6  # 8-bit blurs of faint alpha are a little off


def test_fill_masked_with_soft_mask_keeps_zero_mask_pixels_exact():
    image = gradient(48, 40)
    mask = prepare_mask(square_mask(size=(48, 40), box=(16, 12, 32, 28)), 3, 3, False)
    out = px(fill_masked(image, mask))
    zero = px(mask) == 0
    assert np.array_equal(out[zero], px(image)[zero])
    assert out.shape == (40, 48, 3)


# --- composite_original ---------------------------------------------------------------------------

def test_composite_keeps_the_original_outside_the_mask_exactly():
    original = gradient(60, 40)
    generated = solid((60, 40), (10, 200, 30))
    mask = prepare_mask(square_mask(size=(60, 40), box=(20, 10, 40, 30)), 4, 4, False)
    out = px(composite_original(original, generated, mask))
    m = px(mask)
    assert np.array_equal(out[m == 0], px(original)[m == 0])
    assert np.array_equal(out[m == 255], px(generated)[m == 255])
    partial = (m > 0) & (m < 255)
    assert partial.any()
    expected = px(original) * (1 - m[..., None] / 255) + px(generated) * (m[..., None] / 255)
    assert np.abs(out[partial] - expected[partial]).max() <= 0.5 + 1e-9


def test_composite_rejects_mismatched_sizes():
    with pytest.raises(ValueError):
        composite_original(gradient(10, 10), gradient(10, 12), square_mask(size=(10, 10), box=(1, 1, 3, 3)))


# --- paste_region ---------------------------------------------------------------------------------

def test_paste_region_places_the_resized_patch_at_the_box():
    canvas = gradient(100, 80)
    before = px(canvas).copy()
    patch = stripes((64, 64), [32], [RED, BLUE])  # generated at full size
    box = (10, 20, 42, 52)
    out = px(paste_region(canvas, patch, box))
    assert np.array_equal(px(canvas), before)  # the canvas itself is untouched
    assert np.array_equal(out[20:52, 10:42], px(patch.resize((32, 32), Image.Resampling.LANCZOS)))
    assert (np.abs(out[20:52, 10:24] - RED).max(axis=-1) <= 2).all()
    assert (np.abs(out[20:52, 28:42] - BLUE).max(axis=-1) <= 2).all()
    outside = np.ones(out.shape[:2], bool)
    outside[20:52, 10:42] = False
    assert np.array_equal(out[outside], before[outside])


def test_paste_region_fits_a_patch_of_the_box_aspect():
    canvas = solid((50, 50), (0, 0, 0))
    patch = solid((64, 32), (9, 99, 199))
    out = px(paste_region(canvas, patch, (5, 5, 45, 25)))
    assert (out[5:25, 5:45] == (9, 99, 199)).all()
    assert out[4, 4].sum() == 0 and out[25, 45].sum() == 0 and out[24, 44].sum() > 0


def test_paste_region_crops_rather_than_stretches_another_aspect():
    patch = stripes((90, 30), [30, 60], [RED, GREEN, BLUE])  # only the middle fits a square box
    out = px(paste_region(solid((40, 40), (0, 0, 0)), patch, (10, 10, 30, 30)))
    region = out[10:30, 10:30]
    assert (region[..., 1] >= 240).all() and region[..., [0, 2]].max() <= 15  # a stretch shows red
