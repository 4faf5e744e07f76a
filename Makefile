# Set-up: `make demo` (install, write the tiny demo model, run test_input.json) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned, so pip never resolves another build (CUDA wheels are GBs).
# On a GPU machine: make TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
DEMO_MODELS_DIR ?= models
DEMO_MODEL := $(DEMO_MODELS_DIR)/Stable-diffusion/tiny-sd15.safetensors
# the stand-in face detector and CodeFormer (restore_faces), and the tiny BLIP captioner (/interrogate)
DEMO_FACES := $(DEMO_MODELS_DIR)/Codeformer/codeformer-v0.1.0.pth
DEMO_BLIP := $(DEMO_MODELS_DIR)/BLIP/tiny-blip/config.json
# the tiny ControlNets (alwayson_scripts.controlnet) and the depth modules' networks
DEMO_CONTROLNET := $(DEMO_MODELS_DIR)/ControlNet/tiny-controlnet-sd15.safetensors
DEMO_FILES := $(DEMO_MODEL) $(DEMO_FACES) $(DEMO_BLIP) $(DEMO_CONTROLNET)
export HF_HUB_OFFLINE := 1

.PHONY: install demo test serve serve-runpod bake bench-cold bench-cold-sdxl bench-throughput clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"
	# spandrel (neural upscalers, face restorers) without its torchvision requirement: no CPU torchvision exists
	$(PY) -m pip install --no-deps "spandrel>=0.4.2,<0.5" "spandrel-extra-arches>=0.2,<0.3" "einops>=0.7"
	touch $@

$(DEMO_MODEL): | install
	$(PY) -m engine.tiny --models-dir $(DEMO_MODELS_DIR)
	$(PY) -m engine.tiny.lora --models-dir $(DEMO_MODELS_DIR)  # Lora/tiny-lora: try <lora:tiny-lora:0.8>
	$(PY) -m engine.tiny --models-dir $(DEMO_MODELS_DIR) --family sdxl  # SDXL: sd_model_checkpoint tiny-sdxl
	$(PY) -m engine.tiny --models-dir $(DEMO_MODELS_DIR) --family sdxl-refiner  # refiner_checkpoint
	$(PY) -m engine.tiny.lora --models-dir $(DEMO_MODELS_DIR) --family sdxl  # <lora:tiny-sdxl-lora:1> on tiny-sdxl

$(DEMO_FACES): | install
	$(PY) -m engine.tiny.faces --models-dir $(DEMO_MODELS_DIR)

$(DEMO_BLIP): | install
	$(PY) -m engine.tiny.blip --models-dir $(DEMO_MODELS_DIR)

$(DEMO_CONTROLNET): | install
	$(PY) -m engine.tiny --models-dir $(DEMO_MODELS_DIR) --controlnet  # "model": "tiny-controlnet-sd15" in a unit
	$(PY) -m engine.tiny --models-dir $(DEMO_MODELS_DIR) --controlnet --family sdxl  # on tiny-sdxl
	$(PY) -m engine.tiny.annotators --models-dir $(DEMO_MODELS_DIR)  # depth_midas, depth_anything(_v2), softedge_hed, lineart, openpose

demo: install $(DEMO_FILES)
	MODELS_DIR=$(DEMO_MODELS_DIR) SD_MODEL=tiny-sd15 $(PY) -m handler.local test_input.json --outputs outputs

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest tests

# The A1111-compatible HTTP server (http://127.0.0.1:7860/sdapi/v1/..., docs at /docs), on the demo model.
serve: install $(DEMO_FILES)
	MODELS_DIR=$(DEMO_MODELS_DIR) $(PY) -m handler.http --host 127.0.0.1 --port 7860

# The RunPod worker with RunPod's local API (POST http://127.0.0.1:8000/runsync), on the demo model.
serve-runpod: install $(DEMO_FILES)
	MODELS_DIR=$(DEMO_MODELS_DIR) $(PY) -m handler --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000

# Fill MODELS_DIR from a manifest (what the image build does): make bake MANIFEST=models.toml MODELS_DIR=/models
MANIFEST ?= models.toml
MODELS_DIR ?= models
bake: install
	$(PY) -m engine.store.bake --manifest $(MANIFEST) --models-dir $(MODELS_DIR)

# Cold-start benchmark (not a test): ours vs a plain diffusers script vs reading the weights once, on an SD 1.5-
# or an SDXL-size checkpoint with random weights (tests/bench/gpu_check.sh runs both on a bare CUDA machine).
bench-cold: install
	$(PY) tests/bench/cold_start.py

bench-cold-sdxl: install
	$(PY) tests/bench/cold_start.py --family sdxl

# Throughput benchmark (not a test): ours vs a bare diffusers call, N jobs batched vs one at a time.
# make bench-throughput BENCH_ARGS="--family sdxl"
bench-throughput: install
	$(PY) tests/bench/throughput.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs $(DEMO_MODEL) $(DEMO_FACES) $(DEMO_MODELS_DIR)/FaceDetection/face_detection_yunet_2023mar.onnx \
		$(dir $(DEMO_BLIP))

# Release (infra/README.md): settings in infra/deploy.yaml; RUNPOD_API_KEY, REGISTRY_USERNAME, REGISTRY_PASSWORD
# from the environment. make deploy ENV=production [TAG=0.1.0-abc1234]; make rollback ENV=production [TO=tag]
.PHONY: build push deploy deploy-dry-run smoke rollback
ENV ?= staging
INFRA := $(PY) -m infra.deploy

build: install
	$(INFRA) build

push: install
	$(INFRA) push

deploy: install
	$(INFRA) deploy --env $(ENV) $(if $(TAG),--tag $(TAG))

deploy-dry-run: install
	$(INFRA) deploy --env $(ENV) --dry-run $(if $(TAG),--tag $(TAG))

smoke: install
	$(INFRA) smoke --env $(ENV)

rollback: install
	$(INFRA) rollback --env $(ENV) $(if $(TO),--to $(TO))
