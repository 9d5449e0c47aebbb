"""``finetune: head``: the frozen backbone's features, computed once per image and cached, and
the inputs the classifier head trains and validates on.

On a CPU this is the difference between minutes and hours for a pretrained network on a few
thousand photos: an epoch is one small matrix product per batch. The cache is keyed by
everything that shapes the features (architecture, weights, image size and pixels, views,
augmentation and seed), so experiments that change only the head's settings (lr, epochs, ...)
reuse it; anything else computes it afresh. The exported model is still the whole network.

On the CPU the unaugmented images go through onnxruntime: the frozen network is exported once
(:mod:`imgpipe.training.backbone_graph`, kept beside the features, where export-onnx finds it
again) and onnxruntime computes its features 2-4x faster than torch eager for CNNs on a laptop
CPU (EfficientNet-Lite0 at 224 px: 123 against 36 images/s on 2 cores). The engine is part of
the cache key. Augmented views, and every view on a GPU, stay
in torch (kornia augments tensors on the training device).

Each split's unaugmented features have an entry of their own, keyed by the frozen network's
weights and the split's pixels (:func:`split_features`), so every stage that meets the same
backbone and pixels again reads them instead of running the backbone: the audit (all three
splits), train (train and val), and, for a model trained with ``finetune: head``, calibrate
(val) and evaluate (test), whose logits are the trained classifier on those features
(:func:`model_logits`). In a `dvc repro` of a photo folder the backbone then runs once over
each image. Whether an entry was there never changes an output: a missing one is computed by
the same engine and stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from imgpipe.data.splits import SplitArrays
from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path, file_sha256
from imgpipe.runtime.feature_entries import (
    CACHE_FORMAT,
    digest_pixels,
    entry_fields,
    entry_key,
    split_entry,
)
from imgpipe.training.backbone_graph import GRAPH_OPSET, backbone_fingerprint, backbone_graph
from imgpipe.training.distributed import Processes, wait_for_every_process
from imgpipe.training.inference import autocast, autocast_dtype, predict_logits
from imgpipe.training.model import Classifier, ModelMeta
from imgpipe.training.settings import TrainConfig

log = logging.getLogger(__name__)

EMBED_BATCH = 64  # images per forward pass while filling the cache


@dataclass
class FeatureInputs:
    """Training inputs of the head: ``views`` (``V x N x D``) of every image's features; each
    time an image is drawn, one of its views is (view 0 is the unaugmented image)."""

    views: np.ndarray
    labels: np.ndarray
    chooser: torch.Generator

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        view = torch.randint(len(self.views), (len(rows),), generator=self.chooser).numpy()
        features = torch.from_numpy(np.ascontiguousarray(self.views[view, rows]))
        return features.to(device), torch.from_numpy(self.labels[rows]).to(device)


def cache_key(
    config: TrainConfig, train: SplitArrays, val: SplitArrays, device: torch.device
) -> str:
    """The key of the augmented training views (``feature_views`` > 1): everything that shapes
    them; the head's own settings are left out. The device type and its autocast precision
    count: features computed in bf16 on a GPU (with CUDA's random draws for the views) are not
    the CPU's, and must not be reused there."""
    weights = config.pretrained
    if isinstance(weights, str) and Path(weights).is_file():
        weights = file_sha256(Path(weights))
    shaping = {
        "format": CACHE_FORMAT,
        "model": config.model,
        "pretrained": weights,
        "views": config.feature_views,
        "seed": config.seed,
        "device": device.type,
        "precision": str(autocast_dtype(device)),
        "engine": engine(device),
        "augment": config.augment.model_dump() if config.feature_views > 1 else None,
    }
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    for split in (train, val):
        digest.update(json.dumps([split.images.shape, split.files]).encode())
        digest_pixels(digest, split.images)
    return digest.hexdigest()[:32]


def cached_features(
    backbone: FrozenBackbone,
    train: SplitArrays,
    val: SplitArrays,
    config: TrainConfig,
    *,
    augment: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device,
    cache: Path | None,
    processes: Processes,
) -> tuple[np.ndarray, np.ndarray]:
    """Training views (``V x N x D``; view 0 unaugmented) and validation features (``N x D``)
    of the frozen ``backbone``, from ``cache`` when it holds them, else computed and stored
    there by the first process of each machine (nodes need not share a filesystem; where they
    do, the atomic rename makes the second writer harmless)."""
    first = split_features(backbone, train, cache, processes=processes, name="train")
    val_features = split_features(backbone, val, cache, processes=processes, name="val")
    if config.feature_views == 1:
        return first[None], val_features
    if cache is None:
        augmented = _augmented_views(backbone, train, config, augment)
        return np.concatenate([first[None], augmented]), val_features
    path = cache / f"views-{cache_key(config, train, val, device)}.npz"
    if not path.is_file() and processes.local_rank == 0:
        augmented = _augmented_views(backbone, train, config, augment)
        with atomic_path(path) as temporary, temporary.open("wb") as handle:
            np.savez(handle, views=augmented)
    wait_for_every_process(processes)  # the others read what their node's first process wrote
    log.info("frozen features: augmented views from %s", path)
    with np.load(path) as stored:
        return np.concatenate([first[None], stored["views"]]), val_features


def split_features(
    backbone: FrozenBackbone,
    split: SplitArrays,
    cache: Path | None,
    *,
    processes: Processes | None = None,
    name: str = "split",
) -> np.ndarray:
    """The frozen ``backbone``'s features (``N x D``) of the unaugmented images of ``split``:
    from ``cache`` when an entry for these weights and pixels is there, else computed (by the
    first process of each machine) and stored for whichever stage meets them next."""
    description = f"features {name}"
    if cache is None:
        return backbone.features(split.images, description)
    processes = processes or Processes()
    path = split_entry(cache, backbone.fields(), split.images)
    if not path.is_file() and processes.local_rank == 0:
        features = backbone.features(split.images, description)
        with atomic_path(path) as temporary, temporary.open("wb") as handle:
            np.savez(handle, features=features)
    wait_for_every_process(processes)
    log.info("frozen features of %s from %s", name, path)
    with np.load(path) as stored:
        features_read: np.ndarray = stored["features"]
        return features_read


def _augmented_views(
    backbone: FrozenBackbone,
    train: SplitArrays,
    config: TrainConfig,
    augment: Callable[[torch.Tensor], torch.Tensor] | None,
) -> np.ndarray:
    """Views 2..V of the training images (``V-1 x N x D``), in torch on the training device."""
    device = backbone.device
    views = []
    # The views' draws (CPU and CUDA generators) leave training's alone.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        for view in range(2, config.feature_views + 1):
            named = f"features train view {view}/{config.feature_views}"
            views.append(embed(backbone.network, train.images, device, augment, named))
    return np.stack(views)


def engine(device: torch.device) -> str:
    """What computes the unaugmented features on ``device``."""
    return "onnxruntime" if device.type == "cpu" else "torch"


@dataclass
class FrozenBackbone:
    """A frozen network's penultimate features of unaugmented images, through onnxruntime on
    the CPU (:func:`engine`; exported on first use, then kept) and torch elsewhere. A network
    the exporter cannot take falls back to torch, with a warning: the same every time for
    that network, so the cache key stays true."""

    network: Classifier
    device: torch.device
    graphs: Path | None = None  # where the exported graph is kept (the feature cache)
    _session: Any = field(default=None, init=False, repr=False)
    _exportable: bool = field(default=True, init=False, repr=False)
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.network.eval()

    def key(self, images: np.ndarray) -> str:
        """What shapes these images' features: the network's weights and normalisation (its
        classifier left out), the engine and precision that compute them (:meth:`fields`),
        and every pixel."""
        return entry_key(self.fields(), images)

    def fields(self) -> dict[str, Any]:
        """The key's fields other than the images, which export-onnx records for
        drift-baseline to find these features by (:mod:`imgpipe.runtime.feature_entries`)."""
        return entry_fields(
            self.fingerprint(),
            self.device.type,
            str(autocast_dtype(self.device)),
            engine(self.device),
        )

    def fingerprint(self) -> str:
        """:func:`~imgpipe.training.backbone_graph.backbone_fingerprint`, computed once."""
        if self._fingerprint is None:
            self._fingerprint = backbone_fingerprint(self.network)
        return self._fingerprint

    def features(self, images: np.ndarray, description: str = "features") -> np.ndarray:
        """Penultimate-layer features of ``N x H x W x C`` uint8 images."""
        if engine(self.device) == "torch" or not len(images) or not self._open(images.shape):
            return embed(self.network, images, self.device, description=description)
        name = self._session.get_inputs()[0].name
        out = []
        for start in tqdm(range(0, len(images), EMBED_BATCH), desc=description, unit="batch"):
            batch = images[start : start + EMBED_BATCH].transpose(0, 3, 1, 2)
            out.append(self._session.run(None, {name: np.ascontiguousarray(batch)})[0])
        return np.concatenate(out).astype(np.float32, copy=False)

    def _open(self, shape: tuple[int, ...]) -> bool:
        """The onnxruntime session, exported for images of ``shape`` (``N x H x W x C``) on first
        use; False when the exporter cannot take the network."""
        if self._session is not None or not self._exportable:
            return self._exportable
        import onnxruntime as ort

        height, width, channels = shape[1:]
        try:
            shape_chw = (channels, height, width)
            graph = backbone_graph(self.network, shape_chw, GRAPH_OPSET, self.graphs, keep=True)
            proto = graph.SerializeToString()
        except (torch.onnx.OnnxExporterError, ImgpipeError) as error:
            # a network the exporter cannot take: torch computes instead (any other error is a
            # bug, and falling back would hide it behind slower features)
            log.warning("frozen features: ONNX export failed (%s); torch computes them", error)
            self._exportable = False
            return False
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        self._session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
        log.info("frozen features: onnxruntime (graph exported, %.1f MB)", len(proto) / 1e6)
        return True


@torch.no_grad()
def embed(
    network: Classifier,
    images: np.ndarray,
    device: torch.device,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    description: str = "features",
) -> np.ndarray:
    """Penultimate-layer features (what the head sees) of ``N x H x W x C`` uint8 images."""
    out = []
    for start in tqdm(range(0, len(images), EMBED_BATCH), desc=description, unit="batch"):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + EMBED_BATCH]))
        pixels = batch.permute(0, 3, 1, 2).to(device)
        if augment is not None:
            pixels = augment(pixels)
        with autocast(device):
            out.append(network.forward_with_embedding(pixels)[1].float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def head_logits(
    head: torch.nn.Module, features: np.ndarray, batch_size: int, device: torch.device
) -> torch.Tensor:
    """The classifier ``head`` on ``features`` (``N x D``), in batches, as float32 on the CPU."""
    head.eval()
    out = []
    for start in range(0, len(features), batch_size):
        chunk = torch.from_numpy(features[start : start + batch_size]).to(device)
        out.append(head(chunk).float().cpu())
    return torch.cat(out)


def head_probabilities(
    head: torch.nn.Module, features: np.ndarray, batch_size: int, device: torch.device
) -> torch.Tensor:
    return head_logits(head, features, batch_size, device).softmax(1)


def trained_on_frozen_features(meta: ModelMeta) -> bool:
    """Whether the checkpoint's backbone is the frozen pretrained one (``finetune: head``)."""
    return meta.training.get("finetune") == "head"


@torch.no_grad()
def model_logits(
    model: Classifier,
    meta: ModelMeta,
    split: SplitArrays,
    batch_size: int,
    device: torch.device,
    *,
    cache: Path | None,
    name: str = "split",
) -> np.ndarray:
    """The logits of every image of ``split`` (called ``name`` in the log). For a model
    trained with ``finetune: head``, its classifier on the frozen backbone's features, read
    from ``cache`` when training (or the audit) left them there; otherwise the whole network on
    the images. The choice depends on the model alone, never on what the cache holds, so the
    output does not either."""
    if not trained_on_frozen_features(meta) or not len(split):
        return predict_logits(model, split, batch_size, device).numpy()
    features = split_features(FrozenBackbone(model, device, cache), split, cache, name=name)
    return head_logits(model.net.get_classifier(), features, batch_size, device).numpy()
