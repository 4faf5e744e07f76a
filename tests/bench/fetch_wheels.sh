#!/usr/bin/env bash
# Download, into the repository's .whl/ (git-ignored), the wheels that tests/bench/gpu_check.sh installs on the
# bare GPU machine: Python 3.12, manylinux x86_64. The versions are the ones this repository is tested with. That
# machine's image has torch, accelerate, huggingface_hub, safetensors, tokenizers, numpy, pillow, scipy, peft,
# aiohttp, psutil and py-cpuinfo; these are what it lacks (or holds in older versions) for the bake, diffusers'
# single-file loader and `python -m handler` (runpod imports paramiko, hence cryptography, PyNaCl, bcrypt, cffi).
# Run it here, where pip can reach the registry: tests/bench/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl
platforms=()
for tag in manylinux_2_17 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux2014 \
           manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  diffusers==0.42.1 transformers==5.24.0 regex==2026.11.19 typing-extensions==4.16.0 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  torchsde==0.2.6 trampoline==0.1.2 \
  runpod==1.12.0 aiohttp-retry==2.9.1 backoff==2.2.1 tomli==2.5.0 tomlkit==0.15.2 tqdm-loggable==0.4.1 \
  paramiko==5.1.0 cryptography==50.0.2 pynacl==1.6.2 bcrypt==5.0.0 cffi==2.1.1
du -sh .whl
