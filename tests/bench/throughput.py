"""Throughput benchmark: our request path against a bare diffusers call, and N jobs batched against one at a time.

    python tests/bench/throughput.py [--family sd15|sdxl] [--size WxH] [--steps N] [--jobs N] [--runs N]
                                     [--dtype D] [--cache DIR] [--batch-entry NAME]     (make bench-throughput)

In one process, on the full SD 1.5 architecture (SDXL base with --family sdxl) with random weights: cold_start.py's
checkpoint, written once into --cache and baked as the image build does. The engine starts on it as the worker does
(its device, and its dtype unless --dtype says: CUDA in float16 when present, on the CPU the weights' float16),
then, for one request (--size, --steps, Euler, CFG 7; each call another prompt, so that none finds its encoding in
the engine's cache; the negative prompt empty, whose encoding the engine keeps, as it does in service):
- bare: diffusers' pipeline (StableDiffusionPipeline or StableDiffusionXLPipeline) built from the engine's own
  modules with an Euler scheduler, called for the same image;
- ours: the same request through the router (handler.router.route, POST txt2img): A1111's body with the PNG, its
  infotext, base64. `ours/bare` is our overhead (target <= 1.05); "engine" is the engine's txt2img alone, without
  the router's PNG and base64 encoding;
- N jobs (--jobs; other prompts and seeds, the same size and steps) through the engine one at a time, and through
  its batched entry point when it has one (--batch-entry, else the first of BATCH_ENTRIES): jobs per second, and
  batched/one at a time. Without one it prints "batching: not available".
Each is timed after one untimed run, the median of --runs, interleaved. Defaults: on CUDA 512x512 (SDXL: 1024x1024)
at 20 steps; on the CPU 128x128 at 4 steps; 4 jobs. it/s: sampling steps per second of the whole image (prompt
encoding, steps, decoding).
The WORKER_* fast-path variables (README, "GPU fast path") apply to both bare and ours: they share the modules.
Not a test: it measures this machine, in this run.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cold_start import NAIVE_LOADS, make_checkpoint  # noqa: E402  (after the path)

BATCH_ENTRIES = ("generate_together", "txt2img_batch")  # the engine's batched txt2img, by the names it may have
CFG_SCALE = 7.0
PROMPTS = ("a red cube on a table", "a lighthouse at dusk", "an astronaut riding a horse", "a bowl of fruit",
           "a city street in the rain", "a snowy mountain", "a portrait of a cat", "a sailing boat")


def batched_runner(engine, name: str | None = None) -> Callable[[list], list] | None:
    """The engine's entry point that generates a list of Txt2ImgRequest together (named, else the first of
    BATCH_ENTRIES it has); None when it has none."""
    for candidate in (name,) if name else BATCH_ENTRIES:
        entry = getattr(engine, candidate, None)
        if callable(entry):
            return entry
    return None


def one_at_a_time(engine) -> Callable[[list], list]:
    return lambda requests: [engine.txt2img(request) for request in requests]


def bare_pipeline(engine):
    """diffusers' own pipeline over the engine's loaded modules, with an Euler scheduler from the checkpoint's."""
    from diffusers import EulerDiscreteScheduler

    model = engine.model
    cls = type(model.pipe)
    extra = {"requires_safety_checker": False} if "requires_safety_checker" in inspect.signature(cls).parameters else {}
    pipe = cls(**{**model.pipe.components, "scheduler": EulerDiscreteScheduler.from_config(model.scheduler_config)},
               **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cpu_name() -> str:
    try:
        return re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M).group(1)
    except (OSError, AttributeError):
        return "unknown"


def timed(calls: dict[str, Callable[[], object]], runs: int, synchronize: Callable[[], None]) -> dict[str, float]:
    """The median seconds of `runs` calls of each, after one untimed call of each; interleaved, so that the
    machine's drift affects them alike."""
    for call in calls.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            synchronize()
            start = time.perf_counter()
            call()
            synchronize()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=NAIVE_LOADS, default="sd15")
    parser.add_argument("--size", help="WIDTHxHEIGHT (default: 512x512, SDXL 1024x1024, on CUDA; 128x128 on the CPU)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: 20 on CUDA, 4 on the CPU)")
    parser.add_argument("--jobs", type=int, default=4, help="N, the jobs batched or run one at a time")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", help="float16, bfloat16 or float32 (default: the worker's)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "a1111-worker-bench")
    parser.add_argument("--batch-entry", help="the engine's batched txt2img method (default: the first of "
                        f"{', '.join(BATCH_ENTRIES)} it has)")
    args = parser.parse_args()
    checkpoint = make_checkpoint(args.cache, args.family)

    import torch

    from engine.runtime import Engine
    from handler.router import route
    from schemas import Txt2ImgRequest

    engine = Engine.start(models_dir=args.cache / "models", sd_model=checkpoint.name, dtype=args.dtype)
    cuda = engine.device.type == "cuda"
    width, height = (int(side) for side in (args.size or ("128x128" if not cuda else "1024x1024"
                                                          if args.family == "sdxl" else "512x512")).split("x"))
    steps = args.steps or (20 if cuda else 4)
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    payload = {"seed": 1, "steps": steps, "width": width, "height": height,
               "sampler_name": "Euler", "cfg_scale": CFG_SCALE}
    pipe = bare_pipeline(engine)
    takes = itertools.count()

    def fresh(job: int = 0) -> dict:
        """The payload with a prompt no call had before."""
        return {**payload, "prompt": f"{PROMPTS[job % len(PROMPTS)]}, take {next(takes)}", "seed": 1 + job}

    def bare():
        generator = torch.Generator().manual_seed(payload["seed"])
        return pipe(prompt=fresh()["prompt"], num_inference_steps=steps, width=width, height=height,
                    guidance_scale=CFG_SCALE, generator=generator).images

    def ours():
        return route(engine, "POST", "txt2img", fresh())

    def engine_only():
        return engine.txt2img(Txt2ImgRequest(**fresh()))

    def requests() -> list:
        return [Txt2ImgRequest(**fresh(job)) for job in range(args.jobs)]
    batched = batched_runner(engine, args.batch_entry)
    calls = {"bare": bare, "ours": ours, "engine": engine_only, "single": lambda: one_at_a_time(engine)(requests())}
    if batched:
        calls["batched"] = lambda: batched(requests())
    medians = timed(calls, args.runs, synchronize)
    bare_s, ours_s, engine_s, single_s = (medians[name] for name in ("bare", "ours", "engine", "single"))
    batched_s = medians.get("batched")

    device = torch.cuda.get_device_name(engine.device) if cuda else \
        f"CPU ({cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"{args.family} ({checkpoint.stat().st_size / 1e9:.2f} GB, random weights), {width}x{height}, {steps} steps,"
          f" Euler, CFG {CFG_SCALE:g}; {device}, {str(engine.dtype).removeprefix('torch.')}; torch {torch.__version__};"
          f" median of {args.runs} runs")
    print(f"{'':28}{'s/image':>10}{'it/s':>8}")
    for name, seconds in (("bare diffusers", bare_s), ("ours (router, PNG, base64)", ours_s),
                          ("ours: engine only", engine_s)):
        print(f"{name:28}{seconds:>10.3f}{steps / seconds:>8.2f}")
    print(f"overhead: ours/bare = {ours_s / bare_s:.3f} (target <= 1.05); engine only/bare = {engine_s / bare_s:.3f}")
    print(f"{args.jobs} jobs one at a time: {single_s:.2f} s, {args.jobs / single_s:.3f} jobs/s")
    if batched_s is None:
        print(f"batching: not available (the engine has none of {args.batch_entry or ', '.join(BATCH_ENTRIES)})")
    else:
        print(f"{args.jobs} jobs batched: {batched_s:.2f} s, {args.jobs / batched_s:.3f} jobs/s; "
              f"batched/one at a time = {single_s / batched_s:.2f}x")


if __name__ == "__main__":
    main()
