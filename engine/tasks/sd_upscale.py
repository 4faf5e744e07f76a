"""A1111's "SD upscale" script: upscale the init image, redraw it with img2img in tiles of the request's width x
height that overlap by at least `overlap` pixels, and blend the tiles back together, as A1111 does.

Tiles go through img2img `batch_size` at a time. Seeds follow A1111: upscale n (of n_iter) starts at seed + n,
each batch of tiles at one more than the batch before, and the tiles of a batch count up from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from schemas import Options, RequestError, limits
from schemas.scripts import FIELD, SdUpscaleArgs

from ..postprocess.face_restoration import FaceRestorer
from ..postprocess.upscalers import Upscalers
from ..store.model import LoadedModel
from .generation import Generation, joined, replaced
from .img2img import img2img
from .plan import Plan
from .progress import Progress

UPSCALER_FIELD = SdUpscaleArgs.field("upscaler_index", with_name=False)


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of `tile` pixels start along a side of `length` (>= tile): spread evenly, neighbours overlapping
    by at least `overlap`, the last one flush with the end."""
    count = math.ceil((length - overlap) / (tile - overlap))
    spacing = (length - tile) / (count - 1) if count > 1 else 0
    return [min(int(index * spacing), length - tile) for index in range(count)]


@dataclass(frozen=True)
class TileGrid:
    size: tuple[int, int]  # the whole image's
    tile: tuple[int, int]
    overlap: int
    xs: list[int]  # the tiles' left edges
    ys: list[int]  # and top edges

    @classmethod
    def of(cls, size: tuple[int, int], tile: tuple[int, int], overlap: int) -> TileGrid:
        xs, ys = (tile_origins(length, side, overlap) for length, side in zip(size, tile))
        return cls(size, tile, overlap, xs, ys)

    @property
    def count(self) -> int:
        return len(self.xs) * len(self.ys)

    def split(self, image: Image.Image) -> list[Image.Image]:
        """The tiles, row by row."""
        width, height = self.tile
        return [image.crop((x, y, x + width, y + height)) for y in self.ys for x in self.xs]

    def combine(self, tiles: list[Image.Image]) -> Image.Image:
        """The tiles (row by row; missing ones black) as one image: each tile fades in over its left neighbour
        across its first `overlap` columns, each row over the row above across its first `overlap` rows."""
        tiles = iter(tiles)
        image = Image.new("RGB", self.size)
        for y in self.ys:
            row = Image.new("RGB", (self.size[0], self.tile[1]))
            for x in self.xs:
                _paste_fading_in(row, next(tiles, None) or Image.new("RGB", self.tile), (x, 0), self.overlap)
            _paste_fading_in(image, row, (0, y), self.overlap)
        return image


def _paste_fading_in(canvas: Image.Image, piece: Image.Image, position: tuple[int, int], overlap: int) -> None:
    """Paste `piece` at `position` (on one axis; 0 on the other). Away from the canvas's edge, its first `overlap`
    pixels along that axis fade in linearly over what is there."""
    x, y = position
    if not overlap or (x == 0 and y == 0):
        canvas.paste(piece, position)
        return
    ramp = (np.arange(overlap) * 255 // overlap).astype(np.uint8)
    width, height = piece.size
    if x:
        head, tail = (0, 0, overlap, height), (overlap, 0, width, height)
        mask, rest = np.tile(ramp, (height, 1)), (x + overlap, y)
    else:
        head, tail = (0, 0, width, overlap), (0, overlap, width, height)
        mask, rest = np.tile(ramp[:, None], (1, width)), (x, y + overlap)
    canvas.paste(piece.crop(head), position, Image.fromarray(mask, "L"))
    canvas.paste(piece.crop(tail), rest)


def tile_grid(plan: Plan, args: SdUpscaleArgs, image_size: tuple[int, int], upscaler: str) -> TileGrid:
    """The tiles of the upscaled image, checked against the limits before any work."""
    size = args.output_size(image_size, upscaler)
    tile = plan.first.size
    n_iter = plan.seeds.batch_count
    if size[0] < tile[0] or size[1] < tile[1]:
        raise RequestError(args.field("scale_factor", with_name=False),
                           f"the upscaled image ({size[0]}x{size[1]}) is smaller than a tile ({tile[0]}x{tile[1]}, "
                           "width x height); raise scale_factor or lower width and height")
    grid = TileGrid.of(size, tile, args.overlap)
    if grid.count * n_iter > limits.MAX_SD_UPSCALE_TILES:
        raise RequestError(FIELD, f"SD upscale would redraw {grid.count * n_iter} tiles ({len(grid.xs)}x"
                                  f"{len(grid.ys)} of {tile[0]}x{tile[1]}, times n_iter {n_iter}); the limit "
                                  f"is {limits.MAX_SD_UPSCALE_TILES} (WORKER_MAX_SD_UPSCALE_TILES); raise width and "
                                  "height or lower scale_factor")
    return grid


def sd_upscale(model: LoadedModel, plan: Plan, args: SdUpscaleArgs, options: Options, image: Image.Image,
               upscaler: str, upscalers: Upscalers, progress: Progress, faces: FaceRestorer | None = None,
               refiner: LoadedModel | None = None) -> Generation:
    """n_iter upscales of `image` with `upscaler` (an A1111 name), each redrawn in tiles (with `refiner`, the
    plan's refiner, loaded)."""
    grid = tile_grid(plan, args, image.size, upscaler)
    image = image.convert("RGB")
    if upscaler != "None":
        image = upscalers.find(upscaler, UPSCALER_FIELD)(image, *grid.size)
    tiles = grid.split(image)
    params = {"SD upscale overlap": args.overlap, "SD upscale upscaler": upscaler}
    batch_size = plan.seeds.batch_size
    results: list[Generation] = []
    for n in range(plan.seeds.batch_count):
        batches = []
        for index, start in enumerate(range(0, len(tiles), batch_size)):
            batch = tiles[start:start + batch_size]
            tile_plan = plan.with_seeds(plan.seeds.seed + n + index, len(batch))
            batches.append(img2img(model, tile_plan, options, batch, None, progress, faces,
                                   script_params=params, refiner=refiner))
            if progress.interrupted:
                break
        if not batches[0].images:  # interrupted before this upscale began
            return joined(results) if results else batches[0]
        results.append(replaced(batches[0], grid.combine([tile.image for b in batches for tile in b.images])))
        if progress.interrupted:
            break
    return joined(results)
