# Backpack Workbench for an NVIDIA GPU host: the dashboard by default, the analyses and training
# on the same image. See docs/DOCKER.md.
#
#   docker build -t backpack-workbench .
#   docker run --gpus all -p 8501:8501 backpack-workbench
#
# Base: the official CUDA PyTorch image, *devel* flavour. flash-attn publishes prebuilt wheels
# only for some torch/CUDA/Python combinations; when none matches, `pip install flash-attn`
# compiles it, which needs nvcc and the CUDA headers (devel only). For a smaller image without
# flash-attn (the model then uses PyTorch's SDPA attention), build with
#   --build-arg BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime --build-arg INSTALL_FLASH_ATTN=0
# The base image's torch (a CUDA build) is kept as it is: docker/install.sh pins it while
# installing requirements.txt at the versions CI tests (constraints.txt).
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

# 1: install flash-attn (GPU only, optional); 0: skip it.
ARG INSTALL_FLASH_ATTN=1
ARG FLASH_ATTN_VERSION=2.8.3
# parallel compile jobs if flash-attn builds from source (each can take several GB of memory)
ARG MAX_JOBS=4
# the image's user; match your host's uid to write to bind-mounted directories
ARG APP_UID=1000

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/workbench \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

WORKDIR /workbench

# Dependencies first, so that code changes do not redo this layer. The ARGs above reach the
# script as environment variables.
COPY requirements.txt constraints.txt ./
COPY docker/install.sh docker/
RUN sh docker/install.sh python

# The code and the shipped model (data/backpack-mini); .dockerignore keeps caches, corpora,
# token shards and runs out. The code stays root-owned; the user writes only runs and data.
COPY . .
RUN groupadd --gid "${APP_UID}" app \
    && useradd --no-log-init --create-home --uid "${APP_UID}" --gid app --shell /bin/bash app \
    && mkdir -p runs data/shards data/corpus data/cache \
    && chown app:app runs data/shards data/corpus data/cache
# numeric, so that the host and Kubernetes' runAsNonRoot see a non-root uid
USER ${APP_UID}:${APP_UID}

# Fail the build if an entry command does not start or the shipped model does not load.
RUN sh docker/smoke.sh

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; r = urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=8); assert r.read().strip() == b'ok'"]
CMD ["streamlit", "run", "app/Home.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
