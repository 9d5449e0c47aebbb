"""The network up to its embedding as an ONNX graph, exported once per backbone and kept.

Two stages need this graph: the frozen-feature cache (onnxruntime computes the features of
``finetune: head``) and ``export-onnx`` (the served file is this graph with the classifier
appended, :func:`with_linear_classifier`). torch's exporter takes about 16 s for
EfficientNet-Lite0 on a 2-core CPU, so the graph is stored beside the feature cache, keyed by
everything it is made of (:func:`backbone_fingerprint`, the image shape, the opset, the
exporter's package versions): after the audit exported it, a ``finetune: head`` model's export
reads it instead of exporting again.
Whether it was there never changes a byte: the exporter writes the same graph for the same
backbone, and a missing entry is exported by the same code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path
from imgpipe.runtime.onnx_contract import INPUT_NAME, OUTPUT_NAMES
from imgpipe.training.model import Classifier

log = logging.getLogger(__name__)

# export.opset's default: export-onnx then reuses the graph the features were computed with.
GRAPH_OPSET = 18

EMBEDDING = OUTPUT_NAMES[1]
GRAPH_FORMAT = 2  # part of the key: bump when the graph's making changes


class _Embedding(nn.Module):
    def __init__(self, network: Classifier) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.forward_with_embedding(images)[1]


def backbone_fingerprint(network: Classifier) -> str:
    """A digest of everything the embedding depends on: the architecture (its module tree, which
    tells ``tf_efficientnet_lite0``'s same-padding from ``efficientnet_lite0``'s with the very
    same weights) and every tensor but the classifier's (weights, batch-norm statistics, the
    normalisation buffers). A classifier that ``finetune: head`` trains does not move it."""
    classifier = network.net.get_classifier()
    prefix = next(f"{name}." for name, module in network.named_modules() if module is classifier)
    digest = hashlib.sha256()
    digest.update(type(network.net).__name__.encode())
    digest.update(str(getattr(network.net, "pretrained_cfg", {}).get("architecture")).encode())
    digest.update(repr(network.net).encode())
    for name, tensor in network.state_dict().items():
        if name.startswith(prefix):
            continue
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def backbone_graph(
    network: Classifier,
    image_shape: tuple[int, int, int],
    opset: int,
    cache: Path | None,
    *,
    keep: bool,
) -> onnx.ModelProto:
    """``network`` from ``uint8`` images (``N x C x H x W``, ``image_shape`` = ``(C, H, W)``,
    dynamic batch) to its embedding, read from ``cache`` when an earlier stage exported the same
    backbone for the same shape and opset, else exported, and kept there when ``keep`` (the
    frozen features keep theirs for export-onnx; export-onnx keeps none: no later stage would
    read a fine-tuned network's)."""
    if cache is None:
        return _export(network, image_shape, opset)
    shaping = {
        "format": GRAPH_FORMAT,
        "backbone": backbone_fingerprint(network),
        "shape": list(image_shape),
        "opset": opset,
        # the exporter's own packages: another version may write another graph
        "exporter": [version(package) for package in ("torch", "onnxscript", "onnx")],
    }
    key = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:32]
    path = cache / f"graph-{key}.onnx"
    if path.is_file():
        log.info("backbone graph from %s", path)
        return onnx.load(path)
    graph = _export(network, image_shape, opset)
    if not keep:
        return graph
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        onnx.save_model(graph, temporary, save_as_external_data=False)
    return graph


def _export(network: Classifier, image_shape: tuple[int, int, int], opset: int) -> onnx.ModelProto:
    return export_graph(_Embedding(network), image_shape, opset, [EMBEDDING])


def export_graph(
    module: nn.Module, image_shape: tuple[int, int, int], opset: int, output_names: list[str]
) -> onnx.ModelProto:
    """``module`` (from ``uint8`` images, ``image_shape`` = ``(C, H, W)``) exported by torch's
    dynamo exporter with a dynamic batch axis and without the stack traces: the one export call
    of the backbone graph and of a model exported whole."""
    example = torch.zeros(2, *image_shape, dtype=torch.uint8)
    with warnings.catch_warnings(), _out_of_place(module):
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        program = torch.onnx.export(
            module.eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns None
        raise ImgpipeError("torch.onnx.export returned no program")
    proto = program.model_proto
    drop_stack_traces(proto)
    return proto


@contextlib.contextmanager
def _out_of_place(module: nn.Module) -> Iterator[None]:
    """``module``'s in-place activations (``ReLU6(inplace=True)`` and the like) computed out of
    place while it is exported, then switched back. The outputs are the same, but the exporter
    decomposes an in-place op through symbolic shapes: EfficientNet-Lite0's 33 of them made its
    export take 14 s instead of 9 s on a 2-core CPU."""
    switched = [m for m in module.modules() if getattr(m, "inplace", None) is True]
    for activation in switched:
        setattr(activation, "inplace", False)  # noqa: B010 (nn.Module types it as a tensor)
    try:
        yield
    finally:
        for activation in switched:
            setattr(activation, "inplace", True)  # noqa: B010


def drop_stack_traces(proto: onnx.ModelProto) -> None:
    """The exporter records each node's Python stack trace, absolute paths included: that made
    the file differ between two checkouts of the same commit. Everything else is kept."""
    for graph in [proto.graph, *proto.functions]:
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def with_linear_classifier(
    graph: onnx.ModelProto, classifier: nn.Linear, temperature: float
) -> onnx.ModelProto:
    """The embedding ``graph`` with ``classifier`` appended: outputs ``logits`` (divided by
    ``temperature``, as :class:`~imgpipe.export.onnx.CalibratedWithEmbedding` does) and
    ``embedding``, the graph torch exports of the whole model."""
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    body = model.graph
    embedding = onnx.ValueInfoProto()
    embedding.CopyFrom(next(output for output in body.output if output.name == EMBEDDING))
    weight = classifier.weight.detach().cpu().float().numpy()
    bias = (
        classifier.bias.detach().cpu().float().numpy()
        if classifier.bias is not None
        else np.zeros(weight.shape[0], np.float32)
    )
    body.initializer.extend(
        [
            numpy_helper.from_array(weight, "imgpipe.classifier.weight"),
            numpy_helper.from_array(bias, "imgpipe.classifier.bias"),
        ]
    )
    logits = OUTPUT_NAMES[0]
    scaled = temperature != 1.0  # no division node in an uncalibrated graph
    body.node.append(
        helper.make_node(
            "Gemm",
            [EMBEDDING, "imgpipe.classifier.weight", "imgpipe.classifier.bias"],
            ["logits_uncalibrated" if scaled else logits],
            name="classifier",
            transB=1,
        )
    )
    if scaled:
        body.initializer.append(
            numpy_helper.from_array(np.array(temperature, np.float32), "imgpipe.temperature")
        )
        body.node.append(
            helper.make_node(
                "Div", ["logits_uncalibrated", "imgpipe.temperature"], [logits], name="calibrate"
            )
        )
    batch = embedding.type.tensor_type.shape.dim[0]
    outputs = [
        helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, [None, weight.shape[0]]),
        embedding,
    ]
    outputs[0].type.tensor_type.shape.dim[0].CopyFrom(batch)
    del body.output[:]
    body.output.extend(outputs)
    return model
