"""txt2img and img2img requests, with the built-in script they may name (script_name; schemas/scripts.py parses
its arguments): "Prompts from file or textbox" becomes one generation per line, joined into one response;
"SD upscale" is an engine operation of its own. Each is checked against the delivery before any work."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.tasks.generation import Generation, joined
from engine.sampling.noise import resolve_seed
from schemas import GenerationRequest, Img2ImgRequest, RequestError
from schemas.errors import quoted
from schemas.scripts import PromptLine, PromptsFromFileArgs

from .delivery import Destination

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtime import Engine

Generate = Callable[[GenerationRequest], Generation]


def generate(request: GenerationRequest, destination: Destination, run: Generate) -> Generation:
    """The request's images: `run(request)`, or, with "Prompts from file or textbox", `run` for each line."""
    if isinstance(request.script, PromptsFromFileArgs):
        lines = prompt_lines(request)
        _preflight(request, destination, [line_request for _, line_request in lines])
        return run_lines(lines, run)
    _preflight(request, destination, [request])
    return run(request)


def _preflight(request: GenerationRequest, destination: Destination, requests: list[GenerationRequest]) -> None:
    """Refuse, before any work, images that can't be delivered (sizes: the largest of `requests`)."""
    if request.send_images:
        destination.preflight(sum(r.batch_size * r.n_iter for r in requests),
                              max(r.output_size[0] for r in requests), max(r.output_size[1] for r in requests))


def prompt_lines(request: GenerationRequest) -> list[tuple[PromptLine, GenerationRequest]]:
    """The script's lines, each with the request it runs, seeded as A1111 seeds them."""
    args: PromptsFromFileArgs = request.script
    lines = args.line_requests(request)
    seed = resolve_seed(request.seed) if args.fixes_seed else request.seed
    return list(zip(lines, args.seeded(lines, seed, request.batch_size * request.n_iter)))


def run_lines(lines: list[tuple[PromptLine, GenerationRequest]], run: Generate) -> Generation:
    """Each line's generation, joined; an error found only while generating (a LoRA, a checkpoint) names its line."""
    generations = []
    for line, request in lines:
        try:
            generations.append(run(request))
        except RequestError as error:
            raise RequestError(PromptsFromFileArgs.field("prompt_txt", with_name=False),
                               f"line {line.number} ({quoted(line.text)}): {error}") from None
    return joined(generations)


def sd_upscale(engine: Engine, request: Img2ImgRequest, image: Image.Image, destination: Destination) -> Generation:
    """The "SD upscale" script on `image`, its upscaler looked up in the engine's /upscalers list."""
    upscaler = request.script.upscaler_name(engine.upscalers.names)
    if request.send_images:
        destination.preflight(request.n_iter, *request.script.output_size(image.size, upscaler))
    return engine.sd_upscale(request, image, upscaler)
