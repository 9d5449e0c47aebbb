"""``imgpipe serve``: the exported ONNX model behind a FastAPI app, built on
:mod:`imgpipe.runtime.onnx_model` alone (the service process never imports torch).

``settings`` (what the CLI needs, importable without FastAPI), ``provenance`` (which commit built
the model), ``batching`` (micro-batches for one inference thread), ``feature_log`` (per-image
features for drift checks), ``metrics`` (Prometheus series), ``guard`` (body limits, request
accounting), ``app`` (the routes).
"""
