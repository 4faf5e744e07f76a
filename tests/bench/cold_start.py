"""Cold-start benchmark: whole processes, interleaved, each measured from start to result.

    python tests/bench/cold_start.py [--runs 3] [--cache DIR] [--threads N]      (make bench-cold)

Creates once (cached) an SD 1.5-size checkpoint with random weights (fp16 safetensors, ~2 GB) and
bakes it into a models directory as the image build does (`engine.bake`: hash recorded, single file
converted into the form that loads fastest; redone, untimed, when the conversion is missing or stale),
compiles this repository's bytecode (as the image build does), then times, at least `--runs` times
each, interleaved, from process start to the line that reports the result (peak RSS over the whole
process):
- floor: import torch and read every weight byte once;
- imports: import torch, diffusers' UNet and VAE and transformers' CLIP text model: what any
  diffusers-based worker imports before it reads a weight (not a target: it shows how much of ours
  is the libraries' import time);
- naive: a plain diffusers script (import the pipeline, load the checkpoint, one 1-step 64x64 image;
  fp16 on a GPU, fp32 on the CPU);
- ours:  `python -m handler --test_input` with a 1-step 64x64 request, start to job result.
Prints median seconds and peak RSS of each, and last `cold start: ours/naive = X.XX, ours/floor = Y.YY`.
Not a test: it measures this machine, in this run, against baselines measured in the same run.
`--threads N` sets OMP_NUM_THREADS for all three: on a machine shared with other work, torch's
threads wait on each other at every operation, which can multiply the time of a generation.
`--cold-cache` drops the weight files from the page cache before every run (as in a fresh container),
so each process reads them from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"sd15": "bench-sd15.safetensors", "sdxl": "bench-sdxl.safetensors"}  # by family (throughput.py: sdxl)
NAME = NAMES["sd15"]

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
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer
from engine.configs import CLIP_TOKENIZER_DIR, architecture_dir
cuda = torch.cuda.is_available()  # fp16 on a GPU, as workers run there; fp32 on the CPU
pipe = StableDiffusionPipeline.from_single_file(sys.argv[1], config=str(architecture_dir("sd15")),
    tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR), local_files_only=True,
    safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float16 if cuda else torch.float32)
pipe.to("cuda" if cuda else "cpu")(prompt="a cat", num_inference_steps=1, width=64, height=64)
print("bench-result")
"""
OURS_RESULT = "Job result:"  # runpod's log line for a --test_input job


def make_checkpoint(cache: Path, family: str = "sd15") -> Path:
    """The full SD 1.5 (or SDXL base) architecture with random weights in the A1111 single-file layout,
    baked (as the image is) into cache/models. Run in a child process, so this process stays small:
    children forked from a big parent would report its memory as their peak RSS."""
    subprocess.run([sys.executable, __file__, "--make-checkpoint", "--family", family, "--cache", str(cache)],
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return cache / "models" / "Stable-diffusion" / NAMES[family]


def _bake_checkpoint(cache: Path, family: str) -> None:
    """Write the checkpoint unless it is there, then bake it (a re-run only converts what is stale)."""
    from engine.store.bake import Entry, bake

    name = NAMES[family]
    baked = cache / "models" / "Stable-diffusion" / name
    source = baked if baked.exists() else _write_checkpoint(cache, family)
    bake([Entry("checkpoints", str(source), name)], cache / "models")  # records the hash, converts
    if source != baked:
        source.unlink()


def _write_checkpoint(cache: Path, family: str) -> Path:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.configs import architecture_dir
    from engine.families.ldm_format import to_single_file
    from engine.families.sgm_format import to_sdxl_single_file

    config = architecture_dir(family)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")).half()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")).half()
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder")).half()
    if family == "sdxl":  # each module halved once built: SDXL's UNet alone is 10 GB in float32
        open_clip = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config / "text_encoder_2")).half()
        weights = to_sdxl_single_file(unet, vae, text_encoder, open_clip)
    else:
        weights = to_single_file(unet, vae, text_encoder)
    weights = {k: v.half() for k, v in weights.items()}
    raw = cache / NAMES[family]
    cache.mkdir(parents=True, exist_ok=True)
    save_file(weights, raw, metadata={"format": "pt"})
    return raw


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "a1111-worker-bench")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the measured processes")
    parser.add_argument("--cold-cache", action="store_true", help="read the weights from disk in every run")
    parser.add_argument("--make-checkpoint", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--family", choices=NAMES, default="sd15", help=argparse.SUPPRESS)  # with --make-checkpoint
    args = parser.parse_args()
    if args.make_checkpoint:
        return _bake_checkpoint(args.cache, args.family)
    checkpoint = make_checkpoint(args.cache)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "schemas", "engine", "handler"], cwd=ROOT, check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MODELS_DIR": str(args.cache / "models"), "SD_MODEL": NAME,
           "PYTHONPATH": str(ROOT), "WORKER_WARMUP": "0"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    job = json.dumps({"input": {"prompt": "a cat", "steps": 1, "width": 64, "height": 64}})
    commands = {  # name: (argv, the output that marks the result)
        "floor": ([sys.executable, "-c", FLOOR, str(checkpoint)], RESULT),
        "imports": ([sys.executable, "-c", IMPORTS], RESULT),
        "naive": ([sys.executable, "-c", NAIVE, str(checkpoint)], RESULT),
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
    print(f"weights: {weight_bytes / 1e9:.2f} GB; {'CUDA' if cuda else 'CPU'}; {args.runs} runs each; "
          f"threads: {args.threads or 'default'}"
          f"{'; page cache dropped before each run' if args.cold_cache else ''}")
    print(f"{'':8}{'median s':>10}{'peak RSS GB':>14}{'RSS/weights':>13}")
    for name, runs in results.items():
        peak = max(rss for _, rss in runs)
        print(f"{name:8}{medians[name]:>10.2f}{peak / 1e9:>14.2f}{peak / weight_bytes:>13.2f}")
    if cuda:
        print(f"time to first image (CUDA): ours {medians['ours']:.2f} s, naive {medians['naive']:.2f} s")
    print(f"libraries: imports/floor = {medians['imports'] / medians['floor']:.2f} (ours imports them too)")
    print(f"cold start: ours/naive = {medians['ours'] / medians['naive']:.2f}, "
          f"ours/floor = {medians['ours'] / medians['floor']:.2f}")


if __name__ == "__main__":
    main()
