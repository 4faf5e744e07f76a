#!/usr/bin/env bash
# Cold start on a bare CUDA machine (the nvidia-h200 device): process start to first image, fp16 on the GPU, one
# run of each process (tests/bench/cold_start.py --runs 1): SDXL base at 1024x1024, then SD 1.5 at 512x512, 20 steps.
# Each creates its random-weight checkpoint (SDXL 6.9 GB, SD 1.5 2.1 GB) and bakes it first, untimed.
#
# Needs python3 with a CUDA torch (the machine's own) and, carried in .whl/, the wheels that
# tests/bench/fetch_wheels.sh downloads (Python 3.12, manylinux x86_64; what the machine's image lacks or holds older):
#   diffusers 0.42.1, transformers 5.24.0 (with regex 2026.11.19, typing-extensions 4.16.0), pydantic 2.14.4,
#   pydantic-core 2.50.5, annotated-types 0.8.0, typing-inspection 0.4.5, torchsde 0.2.6, trampoline 0.1.2,
#   runpod 1.12.0, aiohttp-retry 2.9.1, backoff 2.2.1, tomli 2.5.0, tomlkit 0.15.2, tqdm-loggable 0.4.1,
#   paramiko 5.1.0, cryptography 50.0.2, pynacl 1.6.2, bcrypt 5.0.0, cffi 2.1.1
# The machine's own torch, accelerate, huggingface_hub, safetensors, tokenizers, numpy, pillow, scipy, peft,
# aiohttp, psutil and py-cpuinfo are used as they are.
#
# On the device, from the repository root, with .whl carried:  bash tests/bench/gpu_check.sh
# The log also goes to $OUT/gpu_check.log (/tmp/gpu_check.log where OUT is unset); it ends with both tables.
set -euo pipefail
cd "$(dirname "$0")/../.."

stamp() { echo "== $(date +%T) $*"; }

main() {
  local results
  results=$(mktemp -d)
  stamp installing "$(ls .whl/*.whl | wc -l)" wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  python3 -m compileall -q -j 0 /tmp/site  # now: else the timed processes would compile what each imports first
  export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  python3 - <<'PY'
import importlib.metadata as metadata, sys, torch
import engine.runtime, runpod.serverless  # fails here, in seconds, if a package is missing
print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
print({name: metadata.version(name) for name in ("diffusers", "transformers", "huggingface_hub", "accelerate",
                                                  "safetensors", "tokenizers", "runpod", "pydantic")})
PY
  echo "$(nproc) CPUs; $(free -g | awk '/Mem/ {print $2}') GB memory; disk: $(df -h ~ | awk 'END {print $4}') free"

  stamp SDXL 1024x1024
  python3 tests/bench/cold_start.py --family sdxl --size 1024x1024 --steps 20 --runs 1 | tee "$results/sdxl"
  stamp SD 1.5 512x512
  python3 tests/bench/cold_start.py --family sd15 --size 512x512 --steps 20 --runs 1 | tee "$results/sd15"
  stamp done
  sed -s -n '/ weights: /,$p' "$results/sdxl" "$results/sd15"  # the two tables
}

main 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
