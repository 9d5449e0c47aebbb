# imgpipe images. Two targets, each installing from its own fully pinned lock:
#   docker build -t imgpipe-serve .                      the model service (default, last stage):
#                                                        requirements-serve.lock, no torch
#   docker build --target pipeline -t imgpipe .          the pipeline: `dvc repro` on /app,
#                                                        requirements.lock (what ./run.sh installs)
# The service needs models/model.onnx in the build context (`dvc repro` or `dvc pull` first);
# pass the commit it was built from to /health with --build-arg MODEL_COMMIT=$(git rev-parse HEAD).
# The same pipeline image trains on a GPU: torch's PyPI wheels bring their own CUDA 13 libraries,
# and the NVIDIA Container Toolkit mounts the host's driver (580 or newer) into the container:
#   docker run --gpus all -e IMGPIPE_REQUIRE_CUDA=1 imgpipe
# (no CUDA base image needed; nvidia/cuda images have no Python 3.11 to build on).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS base

# No usage reports leave the container: onnxruntime's telemetry and DVC's analytics are off
# (imgpipe and .dvc/config also turn them off; these cover any other process). docs/privacy.md
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ORT_DISABLE_TELEMETRY=1 \
    DVC_NO_ANALYTICS=1

RUN useradd --create-home --uid 10001 imgpipe
WORKDIR /app

FROM base AS pipeline
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.lock pyproject.toml README.md ./
RUN python -m pip install -r requirements.lock
COPY src/ src/
RUN python -m pip install --no-deps .
COPY --chown=imgpipe:imgpipe . .
USER 10001
# The container reproduces the pipeline on what is mounted or copied at /app.
CMD ["dvc", "repro"]

FROM base AS serve
COPY requirements-serve.lock pyproject.toml README.md ./
RUN python -m pip install -r requirements-serve.lock
COPY src/ src/
RUN python -m pip install --no-deps .
ARG MODEL_COMMIT=""
ENV IMGPIPE_MODEL_COMMIT=${MODEL_COMMIT}
# The file served: the fp32 export by default, models/int8/model.onnx for the int8 artifact.
ARG MODEL=models/model.onnx
COPY ${MODEL} models/model.onnx
# The feature log (for `imgpipe drift --current logs/requests.jsonl`) is the only thing written.
RUN mkdir logs && chown imgpipe:imgpipe logs
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["imgpipe", "serve", "--host", "0.0.0.0", "--port", "8000", "--model", "models/model.onnx", \
     "--feature-log", "logs/requests.jsonl", "--no-access-log"]
