"""Cold-start benchmark: whole processes, interleaved, each measured from start to result.

    python tests/bench/cold_start.py [--family sd15|sdxl] [--runs 3] [--size 64x64] [--steps 1]
                                     [--cache DIR] [--threads N] [--cold-cache]
    (make bench-cold: SD 1.5; make bench-cold-sdxl: SDXL)

Creates once (cached) a checkpoint of the family's full architecture with random weights (fp16
safetensors in A1111's single-file layout: SD 1.5 2.13 GB, SDXL base 6.94 GB) and bakes it into a
models directory as the image build does (`engine.store.bake`: hash recorded, single file converted
into the form that loads fastest; redone, untimed, when the conversion is missing or stale),
compiles this repository's bytecode (as the image build does), then times, at least `--runs` times
each, interleaved, from process start to the line that reports the result (peak RSS over the whole
process):
- floor: import torch and read every weight byte once;
- imports: import torch, diffusers' UNet and VAE and transformers' CLIP text model: what any
  diffusers-based worker imports before it reads a weight (not a target: it shows how much of ours
  is the libraries' import time);
- naive: a plain diffusers script (import the pipeline, load the checkpoint with `from_single_file`,
  one image; fp16 on a GPU; on the CPU fp32 for SD 1.5, fp16 for SDXL);
- ours:  `python -m handler --test_input` with the same request, start to job result.
The image: `--size` (WxH, default 64x64) with `--steps` (default 1); on a GPU, 1024x1024 at 20 steps
(SDXL) gives process start to first full-size image. Prints median seconds and peak RSS of each, the
peak RSS of ours over the weights' size, and last `cold start: ours/naive = X.XX, ours/floor = Y.YY`.
Not a test: it measures this machine, in this run, against baselines measured in the same run.
`--threads N` sets OMP_NUM_THREADS for all three: on a machine shared with other work, torch's
threads wait on each other at every operation, which can multiply the time of a generation.
`--cold-cache` drops the weight files from the page cache before every run (as in a fresh container),
so each process reads them from disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# this tree first, then what PYTHONPATH holds already (tests/bench/gpu_check.sh puts the packages it installs there)
PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
NAIVE_LOADS = {  # family: (the diffusers pipeline naive loads, its tokenizer arguments, its dtype on the CPU)
    "sd15": ("StableDiffusionPipeline", "tokenizer=tokenizer", "float32"),  # diffusers' default
    "sdxl": ("StableDiffusionXLPipeline", "tokenizer=tokenizer, tokenizer_2=tokenizer",
             "float16"),  # as stored: in float32 it would peak at about 22 GB, too much for a 24 GB machine
}

RESULT = "bench-result"  # what the scripts below print once their result is ready
FLOOR = """
import sys, torch
with open(sys.argv[1], "rb") as f:
    while f.read(1 << 24):
        pass
print("bench-result")
"""

IMPORTS = """
import gc; gc.disable()  # as ours does while it starts
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer
print("bench-result")
"""

NAIVE = """
import sys, torch
from diffusers import {pipeline}
from transformers import CLIPTokenizer
from engine.configs import CLIP_TOKENIZER_DIR, architecture_dir
steps, width, height = map(int, sys.argv[2:])
cuda = torch.cuda.is_available()  # fp16 on a GPU, as workers run there
tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
pipe = {pipeline}.from_single_file(sys.argv[1], config=str(architecture_dir("{family}")), {tokenizers},
    local_files_only=True, torch_dtype=torch.float16 if cuda else torch.{cpu_dtype})
pipe.to("cuda" if cuda else "cpu")(prompt="a cat", num_inference_steps=steps, width=width, height=height)
print("bench-result")
"""
OURS_RESULT = "Job result:"  # runpod's log line for a --test_input job


def checkpoint_name(family: str) -> str:
    return f"bench-{family}.safetensors"


def make_checkpoint(cache: Path, family: str) -> Path:
    """The family's full architecture with random weights in the A1111 single-file layout, baked (as
    the image is) into cache/models. Run in a child process, so this process stays small: children
    forked from a big parent would report its memory as their peak RSS."""
    subprocess.run([sys.executable, __file__, "--make-checkpoint", "--family", family, "--cache", str(cache)],
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": PYTHONPATH}, check=True)
    return cache / "models" / "Stable-diffusion" / checkpoint_name(family)


def _bake_checkpoint(cache: Path, family: str) -> None:
    """Write the checkpoint unless it is there, then bake it (a re-run only converts what is stale)."""
    from engine.store.bake import Entry, bake

    name = checkpoint_name(family)
    baked = cache / "models" / "Stable-diffusion" / name
    source = baked if baked.exists() else cache / name
    if not source.exists():
        cache.mkdir(parents=True, exist_ok=True)
        _write_random_checkpoint(source, _single_file_shapes(family))
    bake([Entry("checkpoints", str(source), name)], cache / "models")  # records the hash, converts
    if source != baked:
        source.unlink()


def _single_file_shapes(family: str) -> dict[str, list[int]]:
    """The tensor shapes of the family's single file, from its modules built on the meta device (no memory)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.configs import architecture_dir
    from engine.families.ldm_format import to_single_file
    from engine.families.sgm_format import to_sdxl_single_file

    config = architecture_dir(family)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
        if family == "sdxl":
            open_clip = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config / "text_encoder_2"))
            state = to_sdxl_single_file(unet, vae, text_encoder, open_clip)
        else:
            state = to_single_file(unet, vae, text_encoder)
    return {key: list(tensor.shape) for key, tensor in state.items()}


def _write_random_checkpoint(path: Path, shapes: dict[str, list[int]]) -> None:
    """A safetensors file of fp16 normal noise, scaled by each tensor's fan-in so that activations stay in
    range, written one tensor at a time: the largest tensor is all this process holds."""
    import torch

    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    torch.manual_seed(0)
    with path.open("wb") as stream:
        stream.write(struct.pack("<Q", len(encoded)) + encoded)
        for shape in shapes.values():
            count = math.prod(shape)
            fan_in = count // shape[0]  # 1 for biases and norms
            stream.write(torch.empty(count, dtype=torch.float16).normal_(0, fan_in ** -0.5).numpy())


def evict(models: Path) -> None:
    """Drop the models directory's weight files from the page cache."""
    for path in models.rglob("*.safetensors"):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def run(argv: list[str], env: dict[str, str], result: str) -> tuple[float, int]:
    """(seconds from start to the first output line holding `result`, peak RSS bytes) of a
    child process. The exit is not timed: a worker never exits after its first job."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    elapsed, output = None, []
    for line in process.stdout:
        output.append(line)
        if elapsed is None and result.encode() in line:
            elapsed = time.perf_counter() - start
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or elapsed is None:
        raise SystemExit(f"{argv[:3]} failed (no {result!r} line):\n{b''.join(output).decode()[-2000:]}")
    return elapsed, usage.ru_maxrss * 1024


def torch_cuda_available() -> bool:
    """Whether the measured processes find a GPU (asked in a child: this process stays torch-free)."""
    check = "import torch; print(torch.cuda.is_available())"
    return subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).stdout.strip() == "True"


def image_size(text: str) -> tuple[int, int]:
    """"WxH" -> (W, H)."""
    width, _, height = text.partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, like 1024x1024 (got {text!r})") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=NAIVE_LOADS, default="sd15", help="the checkpoint's architecture")
    parser.add_argument("--size", type=image_size, default=(64, 64), help="the image: WxH")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "a1111-worker-bench")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the measured processes")
    parser.add_argument("--cold-cache", action="store_true", help="read the weights from disk in every run")
    parser.add_argument("--make-checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_checkpoint:
        return _bake_checkpoint(args.cache, args.family)
    checkpoint = make_checkpoint(args.cache, args.family)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "schemas", "engine", "handler"], cwd=ROOT, check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MODELS_DIR": str(args.cache / "models"), "SD_MODEL": checkpoint.name,
           "PYTHONPATH": PYTHONPATH, "WORKER_WARMUP": "0"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    (width, height), steps = args.size, args.steps
    job = json.dumps({"input": {"prompt": "a cat", "steps": steps, "width": width, "height": height}})
    pipeline, tokenizers, cpu_dtype = NAIVE_LOADS[args.family]
    naive = NAIVE.format(pipeline=pipeline, family=args.family, tokenizers=tokenizers, cpu_dtype=cpu_dtype)
    commands = {  # name: (argv, the output that marks the result)
        "floor": ([sys.executable, "-c", FLOOR, str(checkpoint)], RESULT),
        "imports": ([sys.executable, "-c", IMPORTS], RESULT),
        "naive": ([sys.executable, "-c", naive, str(checkpoint), str(steps), str(width), str(height)], RESULT),
        "ours": ([sys.executable, "-m", "handler", "--test_input", job], OURS_RESULT),
    }
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, (argv, result) in commands.items():  # interleaved, so drift affects all alike
            if args.cold_cache:
                evict(args.cache / "models")
            results[name].append(run(argv, env, result))
    weight_bytes, cuda = checkpoint.stat().st_size, torch_cuda_available()
    medians = {name: statistics.median(t for t, _ in runs) for name, runs in results.items()}
    print(f"{args.family} weights: {weight_bytes / 1e9:.2f} GB; {'CUDA' if cuda else 'CPU'}; {args.runs} runs each; "
          f"{width}x{height}, steps: {steps}; threads: {args.threads or 'default'}"
          f"{'; page cache dropped before each run' if args.cold_cache else ''}")
    print(f"{'':8}{'median s':>10}{'peak RSS GB':>14}{'RSS/weights':>13}")
    for name, runs in results.items():
        peak = max(rss for _, rss in runs)
        print(f"{name:8}{medians[name]:>10.2f}{peak / 1e9:>14.2f}{peak / weight_bytes:>13.2f}")
    ours_peak = max(rss for _, rss in results["ours"])
    print(f"memory: ours peak RSS / weights = {ours_peak / weight_bytes:.2f} (target <= 1.3)")
    if cuda:
        print(f"process start to first {width}x{height} image (CUDA): ours {medians['ours']:.2f} s, "
              f"naive {medians['naive']:.2f} s")
    print(f"libraries: imports/floor = {medians['imports'] / medians['floor']:.2f} (ours imports them too)")
    print(f"cold start: ours/naive = {medians['ours'] / medians['naive']:.2f}, "
          f"ours/floor = {medians['ours'] / medians['floor']:.2f}")


if __name__ == "__main__":
    main()
