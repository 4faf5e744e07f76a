# syntax=docker/dockerfile:1
# The worker image: dependencies, then the weights (baked from a manifest), then the code, so that a
# code change rebuilds only the last layers and never re-downloads or re-copies weights.
#   docker buildx build --build-arg MANIFEST=models.toml -t worker .
# Tokens for gated or civitai sources: --secret id=HF_TOKEN,env=HF_TOKEN --secret id=CIVITAI_TOKEN,env=CIVITAI_TOKEN
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml docker/constraints.txt ./
# the package's dependencies at the pinned versions; torch comes from the base image
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt -c constraints.txt \
    && pip install "spandrel==0.4.2" "spandrel-extra-arches==0.2.0" "einops==0.8.2"

FROM deps AS fetch
ARG MANIFEST=models.toml
WORKDIR /build
# only what fetching runs: engine changes elsewhere never download the weights again
COPY engine/__init__.py ./engine/
COPY engine/store/__init__.py engine/store/bake.py engine/store/models_dir.py ./engine/store/
COPY ${MANIFEST} ./models.toml
RUN --mount=type=secret,id=HF_TOKEN,env=HF_TOKEN --mount=type=secret,id=CIVITAI_TOKEN,env=CIVITAI_TOKEN \
    python -m engine.store.bake --manifest models.toml --models-dir /models --no-convert

FROM fetch AS bake
# the same bake again, now converting single files into the form that loads fastest (skips the fetched)
COPY engine/store ./engine/store
COPY engine/families ./engine/families
COPY engine/configs ./engine/configs
RUN python -m engine.store.bake --manifest models.toml --models-dir /models

FROM deps AS runtime
RUN useradd --create-home --uid 10001 worker
COPY --from=bake --chown=worker:worker /models /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY engine ./engine
COPY handler ./handler
# the command runs this copy (the working directory comes first on sys.path), as a user that can't
# write __pycache__ here: compiled now, or every start would compile the sources again
RUN pip install --no-deps . && python -m compileall -q schemas engine handler
USER 10001
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MODELS_DIR=/models
# RunPod serverless; on Lambda-style HTTP platforms use: python -m handler.http --host 0.0.0.0 --port 7860
CMD ["python", "-m", "handler"]
