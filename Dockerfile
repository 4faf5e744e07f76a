# The RunPod serverless worker. First version: installs the package on a CUDA PyTorch runtime;
# checkpoints are mounted (or put) under /models. Baking weights into the image comes later.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    MODELS_DIR=/models

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY engine ./engine
COPY handler ./handler
# torch comes from the base image (the package asks only for torch>=2.4, which it satisfies)
RUN pip install .

CMD ["python", "-m", "handler"]
