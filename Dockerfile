# syntax=docker/dockerfile:1
#
# SlimServe image: a builder stage fills a virtual environment, a slim runtime stage runs it.
#
#   CPU (default):
#     docker build -t slimserve:0.1.0 .
#   CUDA (any CUDA runtime base; Python is installed from the distro when the base lacks it):
#     docker build -t slimserve:0.1.0-cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
#   Run:
#     docker run -p 3000:3000 -p 8001:8001 -v slimserve-data:/data -e SLIMSERVE_ADMIN_TOKEN=... slimserve:0.1.0
#
# The process runs as uid 1000 with gid 0, and /data (models, variants, caches) is owned by
# group 0 and group-writable, so platforms that pick a random uid in group 0 (OpenShift) work.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A CUDA base has no Python: take the distro's (versions follow the chosen base, so no pins).
# hadolint ignore=DL3008
RUN if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# torch first, from the index the build argument names (CPU wheels by default), so the
# project install below finds it satisfied and never pulls a CUDA build from PyPI.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY compression/ compression/
COPY service/ service/
# The onnx extra: variants the search chose ONNX Runtime for load in this image too (this
# project itself, not a PyPI name: DL3013 reads ".[onnx]" as an unpinned package).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[onnx,s3]" \
    && python -c "import compression, service, torch; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG UID=1000

LABEL org.opencontainers.image.title="SlimServe" \
      org.opencontainers.image.description="Model serving with on-the-fly structural compression per device profile" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Same interpreter as the builder (the venv links to it). Then the service user: uid 1000,
# primary group 0; a base that already has uid 1000 (ubuntu) gives it up first.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && if getent passwd "${UID}" >/dev/null; then \
        userdel --remove "$(getent passwd "${UID}" | cut -d: -f1)" 2>/dev/null || true; \
    fi \
    && useradd --uid "${UID}" --gid 0 --no-log-init --create-home \
        --home-dir /home/slimserve --shell /usr/sbin/nologin slimserve \
    && mkdir -p /data/bentoml /data/cache \
    && chown -R "${UID}:0" /data /home/slimserve \
    && chmod -R g=u /data /home/slimserve

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/slimserve \
    SLIMSERVE_HOME=/data \
    BENTOML_HOME=/data/bentoml \
    HF_HOME=/data/cache/huggingface \
    XDG_CACHE_HOME=/data/cache \
    MPLCONFIGDIR=/data/cache/matplotlib \
    SLIMSERVE_PROFILE=auto \
    SLIMSERVE_WORKERS=1

WORKDIR /home/slimserve
USER ${UID}

EXPOSE 3000 8001

# The first start trains/loads the built-in models, hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["slimserve"]
CMD ["serve", "--port", "3000"]
