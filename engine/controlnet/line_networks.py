"""The networks of sd-webui-controlnet's softedge_hed and lineart modules, in torch, sized from their weights' shapes
(a tiny test file loads through the same code), and the maps the extension makes with them.

HED (softedge_hed, softedge_hedsafe): lllyasviel's Apache-2.0 HED, the file ControlNetHED.pth. The image, RGB
0..255, less a learnt per-channel offset (`norm`), goes through five VGG-style blocks of 3x3 convolutions, each
followed by a ReLU (widths 64, 128, 256, 512, 512; two, two, three, three and three convolutions), the blocks after
the first starting with a 2x2 max pool. A 1x1 convolution projects each block's output to one channel; the five
projections, scaled to the image's size (bilinear), are averaged, and the edge map is the mean's sigmoid: white
edges on black. The safe variant quantises it first: x 3, truncated, / 2 (0, 0.5 and 1; 1.5 at exactly 1).

Lineart (lineart_realistic, lineart_coarse): the generator of "informative drawings" (Chan et al.), the files
sk_model.pth and sk_model2.pth (coarse). The image, RGB 0..1, goes through a reflection-padded 7x7 convolution to 64
channels, two stride-2 3x3 convolutions (128, 256), three residual blocks (two reflection-padded 3x3
convolutions, the second without a ReLU, added to the block's input), two stride-2 transposed convolutions back
(128, 64) and a reflection-padded 7x7 convolution to one channel with a sigmoid; every convolution but the last is
followed by an instance norm (no learnt scale) and, but where said, a ReLU. It draws dark lines on white, so the
map is 255 minus its output x 255 (truncated to uint8): white lines on black.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..imaging.image_ops import opencv

StateDict = dict[str, torch.Tensor]


def load_weights(path: Path) -> StateDict:
    """A state dict from a .safetensors file, or from a PyTorch pickle (.pth) read without running its code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return state


def _weight(state: StateDict, key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the weights have no {key}: not this network's file")
    return state[key]


def _series(state: StateDict, key: str, step: int = 1) -> list[torch.Tensor]:
    """state[key.format(0)], state[key.format(step)], state[key.format(2 * step)], ... while present."""
    found = []
    while key.format(step * len(found)) in state:
        found.append(state[key.format(step * len(found))])
    return found


def _load(model: nn.Module, state: StateDict) -> nn.Module:
    model.load_state_dict(state)  # strict: a missing or extra key, or a shape that differs, is an error
    return model.eval()


class _HEDBlock(nn.Module):
    def __init__(self, channels_in: int, width: int, convolutions: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels_in if i == 0 else width, width, 3, padding=1)
                                   for i in range(convolutions))
        self.projection = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x, self.projection(x)


class HED(nn.Module):
    """ControlNetHED_Apache2's layout (parameters norm, blockN.convs.K.*, blockN.projection.*); `blocks` gives
    each block's (width, convolutions)."""

    def __init__(self, blocks: Sequence[tuple[int, int]]):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        channels = 3
        for index, (width, convolutions) in enumerate(blocks, start=1):
            self.add_module(f"block{index}", _HEDBlock(channels, width, convolutions))
            channels = width
        self.count = len(blocks)

    @classmethod
    def from_state_dict(cls, state: StateDict) -> HED:
        blocks = []
        while convs := _series(state, f"block{len(blocks) + 1}.convs.{{}}.weight"):
            blocks.append((convs[0].shape[0], len(convs)))
        if not blocks:
            raise ValueError("the weights have no block1.convs.0.weight: not this network's file")
        return _load(cls(blocks), state)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The blocks' one-channel projections, at 1, 1/2, 1/4, ... of the input's size."""
        x = x - self.norm
        projections = []
        for index in range(1, self.count + 1):
            if index > 1:
                x = nn.functional.max_pool2d(x, 2)
            x, projection = getattr(self, f"block{index}")(x)
            projections.append(projection)
        return projections


def hed_map(model: HED, pixels: np.ndarray, safe: bool = False) -> np.ndarray:
    """The edge map (uint8 H x W) of an H x W x 3 uint8 RGB image: the projections scaled up as the extension
    scales them (OpenCV, bilinear, in float32), averaged, their sigmoid in float64."""
    cv2 = opencv()
    height, width = pixels.shape[:2]
    device = model.norm.device
    image = torch.from_numpy(pixels).to(device, torch.float32).permute(2, 0, 1)[None]
    projections = [cv2.resize(p[0, 0].float().cpu().numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
                   for p in model(image)]
    edge = 1.0 / (1.0 + np.exp(-np.mean(projections, axis=0).astype(np.float64)))
    if safe:
        edge = np.trunc(edge.astype(np.float32) * 3.0) / 2.0
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _scaling(widths: Sequence[int], channels: int, transposed: bool) -> nn.Sequential:
    """Stride-2 3x3 convolutions (down, or transposed: up) from `channels` through `widths`, each with an instance
    norm and a ReLU: the parameters at .0, .3, .6, ..."""
    layers = []
    for width in widths:
        conv = (nn.ConvTranspose2d(channels, width, 3, stride=2, padding=1, output_padding=1) if transposed
                else nn.Conv2d(channels, width, 3, stride=2, padding=1))
        layers += [conv, nn.InstanceNorm2d(width), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers)


class LineartGenerator(nn.Module):
    """The informative-drawings generator's layout (model0 ... model4), its widths given: the first convolution's,
    the downsampling ones', the residual blocks' count, the upsampling ones', and the output channels."""

    def __init__(self, first: int, down: Sequence[int], residual_blocks: int, up: Sequence[int], channels_out: int):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, first, 7), nn.InstanceNorm2d(first),
                                    nn.ReLU())
        self.model1 = _scaling(down, first, transposed=False)
        inner = down[-1] if down else first
        self.model2 = nn.Sequential(*(_Residual(inner) for _ in range(residual_blocks)))
        self.model3 = _scaling(up, inner, transposed=True)
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(up[-1] if up else inner, channels_out, 7),
                                    nn.Sigmoid())

    @classmethod
    def from_state_dict(cls, state: StateDict) -> LineartGenerator:
        first = _weight(state, "model0.1.weight").shape[0]
        down = [weight.shape[0] for weight in _series(state, "model1.{}.weight", step=3)]
        up = [weight.shape[1] for weight in _series(state, "model3.{}.weight", step=3)]  # transposed: (in, out, ...)
        residual_blocks = len(_series(state, "model2.{}.conv_block.1.weight"))
        return _load(cls(first, down, residual_blocks, up, _weight(state, "model4.1.weight").shape[0]), state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (self.model0, self.model1, self.model2, self.model3, self.model4):
            x = stage(x)
        return x


def lineart_map(model: LineartGenerator, pixels: np.ndarray) -> np.ndarray:
    """The line map (uint8 H x W, white lines on black) of an H x W x 3 uint8 RGB image whose sides are multiples
    of 4 (the padded image: the generator halves them twice and doubles them back)."""
    device = next(model.parameters()).device
    image = torch.from_numpy(pixels).to(device, torch.float32).permute(2, 0, 1)[None] / 255.0
    lines = model(image)[0, 0].float().cpu().numpy()
    return 255 - (lines * 255.0).clip(0, 255).astype(np.uint8)
