"""The names of the ONNX contract between the exporter and every consumer: input ``images``
(``uint8``, ``N x C x H x W``), outputs ``logits`` and the penultimate-layer ``embedding``, and
the model's metadata as JSON under :data:`METADATA_KEY`.

A file of its own because it is a DVC dependency: the training stages export backbone graphs
under these names, and editing the runtime classifier (:mod:`imgpipe.runtime.onnx_model`)
must not rerun them.
"""

METADATA_KEY = "imgpipe"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "embedding")
