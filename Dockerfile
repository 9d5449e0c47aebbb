# imgpipe: the pinned pipeline environment. CPU by default; for CUDA build with
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 .
# (a CUDA base must provide python3.11). The same requirements.lock as ./run.sh is installed.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 imgpipe

WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN python -m pip install -r requirements.lock
COPY src/ src/
RUN python -m pip install --no-deps .
COPY --chown=imgpipe:imgpipe . .

USER 10001
# The container reproduces the pipeline on what is mounted or copied at /app.
CMD ["dvc", "repro"]
