"""imgpipe: reproducible image classification as a DVC pipeline."""

import os

__version__ = "0.1.0"

# onnxruntime 1.31 on Linux (macOS too, by its PR 27379) queues usage events for Microsoft from
# its first session: the model's file and graph names, its producer, the Python executable's
# path. Teams train on patients' images, so nothing of the sort leaves by default. onnxruntime
# reads the variable once, when it starts, and every stage, the CLI and the server import imgpipe
# before it (a package's __init__ runs first). ORT_DISABLE_TELEMETRY=0 opts back in.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
