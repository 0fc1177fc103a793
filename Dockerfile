# syntax=docker/dockerfile:1
#
# mufleet GPU image: the rendered model repository served by the image's own
# tritonserver with the TensorRT-LLM backend.
#
# Base image: Triton 26.07 "trtllm-python-py3", which carries TensorRT-LLM
# 1.2.1 (TensorRT 10.14.1.48, CUDA 13.1, PyTorch 2.10.0a0 NV build, Python
# 3.12), per the trtllm-python-py3 table in Triton's release compatibility
# matrix (triton-inference-server/server docs/introduction/compatibility.md).
# Engines must be built with the same TensorRT-LLM version (1.2.1).
#
#   docker build -t mufleet:latest .
#   docker run --gpus all --shm-size=2g -p 8000-8002:8000-8002 \
#       -v $PWD/engines:/engines:ro -v $PWD/tokenizer:/tokenizer:ro mufleet:latest
#
# Mounts: /engines (trtllm-build output dir), /tokenizer (HF tokenizer dir);
# /models holds the repository rendered at start-up by the entrypoint.
#
# The entrypoint reads the engine's world size (tp * pp * cp) from
# /engines/config.json: 1 runs one tritonserver, more runs one MPI rank per
# GPU (or, with MUFLEET_TRTLLM_MODE=orchestrator, one tritonserver whose
# backend spawns the workers). Template settings come from environment
# variables (docs/gpu.md lists them), e.g. -e KV_CACHE_FREE_GPU_MEM_FRACTION=0.85.
#
# Only the paths the image needs are copied (no `COPY . .`), so a local .venv
# or bench results never end up in a layer; .dockerignore keeps them out of
# the build context upload too.

FROM nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3

# RUN lines use pipes: a failing stage must fail the build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mufleet

# Project sources only (README* is optional: the glob may match nothing).
COPY pyproject.toml README* ./
COPY mufleet/ ./mufleet/
COPY router/ ./router/
COPY python_backends/ ./python_backends/
COPY model_repository/ ./model_repository/
COPY docker/ ./docker/

# Why --no-deps: pyproject.toml pins torch==2.13.0 and pulls nvidia-pytriton
# (which bundles its own tritonserver), locust, matplotlib, ... Resolving that
# here would replace the image's NVIDIA-built torch that tensorrt_llm is
# compiled against and add a second Triton. In this image the repository is
# served by /opt/tritonserver, and the Python-backend models (preprocessing,
# postprocessing) plus the `mufleet render` CLI only need the few packages
# below. They are installed under a constraints file frozen from the image,
# so a package the image already has (numpy, transformers, tokenizers,
# pydantic, pillow, torch, tensorrt, tensorrt_llm, ...) keeps its exact
# version; if something would have to change, the build fails instead of
# silently breaking tensorrt_llm. tritonclient (http extra) is the only new
# package family. PIP_BREAK_SYSTEM_PACKAGES: the image's Python is the system
# Python 3.12 of Ubuntu 24.04 (PEP 668).
RUN set -eux; \
    export PIP_BREAK_SYSTEM_PACKAGES=1; \
    python3 -m pip list --format=freeze \
        | grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' > /tmp/image-constraints.txt; \
    python3 -m pip install --no-deps /opt/mufleet; \
    python3 -m pip install -c /tmp/image-constraints.txt \
        numpy transformers tokenizers pydantic pillow "tritonclient[http]"; \
    rm -f /tmp/image-constraints.txt; \
    python3 -c "import numpy, tokenizers, transformers, pydantic, PIL, tritonclient.http"; \
    command -v mufleet; \
    command -v mpirun; \
    chmod 0755 /opt/mufleet/docker/entrypoint.sh

# Non-root: the Triton images ship user triton-server (uid/gid 1000). It owns
# /models, which the entrypoint refills at every start. /engines and
# /tokenizer are only read (mount them :ro) and are deliberately neither
# created here nor declared as VOLUMEs: a forgotten -v then shows up as a
# clear "does not exist" error from the entrypoint instead of an empty dir.
RUN set -eux; \
    mkdir -p /models /home/triton-server; \
    chown -R 1000:1000 /models /home/triton-server
# MUFLEET_MODEL_REPOSITORY: where `mufleet render` finds the templates. The
# package is installed non-editable, so its default (next to the installed
# package) does not exist; the templates are the copy in /opt/mufleet.
# MUFLEET_TRTLLM_MODE: how an engine with world size > 1 is served (auto =
# MPI leader mode); the image's mpirun (checked above) starts the ranks.
# (DL3064 takes TOKENIZER_DIR for a secret; it is a mount path.)
# hadolint ignore=DL3064
ENV HOME=/home/triton-server \
    HF_HOME=/home/triton-server/.cache/huggingface \
    MUFLEET_MODEL_REPOSITORY=/opt/mufleet/model_repository \
    MUFLEET_PROFILE=trtllm \
    ENGINE_DIR=/engines \
    TOKENIZER_DIR=/tokenizer \
    MODEL_REPOSITORY=/models \
    MUFLEET_TRTLLM_MODE=auto \
    HTTP_PORT=8000 \
    GRPC_PORT=8001 \
    METRICS_PORT=8002
USER 1000:1000

EXPOSE 8000 8001 8002

# Engine loading can take minutes: generous start period.
# (python3 rather than curl: it is certainly in the image.)
# Exec form: an unreachable or unready server raises, and python3 exits 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8000') + '/v2/health/ready', timeout=4)"]

ENTRYPOINT ["/opt/mufleet/docker/entrypoint.sh"]
CMD []
