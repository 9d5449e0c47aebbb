"""The ``evaluate`` stage's library: metrics of a trained model on the test split, test-time
augmentation, and the pictures of what went wrong (the worst images, and Grad-CAM maps of
where the network looked)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from imgpipe.training.model import Classifier

TOP_K_ACCURACY = 5  # top-k accuracy is reported when there are more classes than this
MULTICROP_SHARE = 0.875  # side of each of the five crops, as a share of the image's side
GRADCAM_MIN_CELLS = 7  # coarser maps cannot say where in the image the network looked


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The headline metrics (accuracy, macro/weighted F1, top-5 accuracy when there are more
    than five classes) and one row per class (precision, recall, F1, support)."""
    predicted = probabilities.argmax(1)
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    headline: dict[str, Any] = {
        "accuracy": round(float(accuracy_score(labels, predicted)), 6),
        "macro_f1": round(
            float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)), 6
        ),
        "weighted_f1": round(
            float(f1_score(labels, predicted, labels=indices, average="weighted", zero_division=0)),
            6,
        ),
        "test_images": len(labels),
    }
    if len(classes) > TOP_K_ACCURACY:
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K_ACCURACY]
        headline[f"top{TOP_K_ACCURACY}_accuracy"] = round(
            float((top == labels[:, None]).any(1).mean()), 6
        )
    rows = [
        {
            "class": name,
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]
    return headline, rows


def tta_views(
    kind: Literal["none", "hflip", "multicrop"],
) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Test-time augmentation: the views of each image whose probabilities are averaged.

    ``hflip``: the image and its mirror image (wrong for digits and text). ``multicrop``: the
    image and its four corners and centre at 87.5% of the side, each resized back.
    """
    if kind == "none":
        return [_identity]
    if kind == "hflip":
        return [_identity, _mirror]
    return [_identity, *(_crop(corner) for corner in ("tl", "tr", "bl", "br", "centre"))]


def _identity(images: torch.Tensor) -> torch.Tensor:
    return images


def _mirror(images: torch.Tensor) -> torch.Tensor:
    return images.flip(-1)


def _crop(corner: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def view(images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        h, w = round(height * MULTICROP_SHARE), round(width * MULTICROP_SHARE)
        top = {"t": 0, "b": height - h, "c": (height - h) // 2}[corner[0]]
        left = {"l": 0, "r": width - w, "e": (width - w) // 2}[corner[1]]
        part = images[..., top : top + h, left : left + w].float()
        return F.interpolate(part, size=(height, width), mode="bilinear", align_corners=False)

    return view


def confusion_rows(
    labels: np.ndarray, predicted: np.ndarray, classes: list[str]
) -> list[dict[str, str]]:
    """One ``{actual, predicted}`` row per image: the input DVC's confusion template wants."""
    return [
        {"actual": classes[int(a)], "predicted": classes[int(p)]}
        for a, p in zip(labels, predicted, strict=True)
    ]


def misclassified_rows(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    files: list[str],
) -> list[dict[str, Any]]:
    """The wrongly classified test images, most confidently wrong first."""
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    rows = [
        {
            "file": files[i],
            "actual": classes[int(labels[i])],
            "predicted": classes[int(predicted[i])],
            "confidence": round(float(probabilities[i, predicted[i]]), 6),
        }
        for i in wrong
    ]
    return sorted(rows, key=lambda row: (-row["confidence"], row["file"]))


def calibration(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the top-1 confidence, and the reliability-diagram rows.

    ECE = sum over equal-width confidence bins of (share of images in the bin) x |accuracy -
    mean confidence| (Guo et al. 2017); empty bins contribute nothing and get no row.
    """
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error, rows = 0.0, []
    for b in range(bins):
        members = index == b
        if not members.any():
            continue
        accuracy, mean_confidence = (
            float(correct[members].mean()),
            float(confidence[members].mean()),
        )
        error += members.mean() * abs(accuracy - mean_confidence)
        rows.append(
            {
                "confidence": round(mean_confidence, 6),
                "accuracy": round(accuracy, 6),
                "images": int(members.sum()),
            }
        )
    return round(float(error), 6), rows


def one_vs_rest_curves(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per class (that class against all others): ROC AUC and average precision, the ROC curve
    rows and the precision-recall curve rows, for DVC plots coloured by class.

    PR curves are given at the 101 recall points 0, 0.01, ..., 1 with interpolated precision
    (the best precision at that recall or above, as in COCO), which keeps the file small.
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    scores: dict[str, dict[str, float]] = {}
    roc_rows: list[dict[str, Any]] = []
    pr_rows: list[dict[str, Any]] = []
    grid = np.linspace(0, 1, 101)
    for index, name in enumerate(classes):
        positive = labels == index
        if positive.all() or not positive.any():  # AUC undefined with one class present
            continue
        score = probabilities[:, index]
        scores[name] = {
            "roc_auc": round(float(roc_auc_score(positive, score)), 6),
            "average_precision": round(float(average_precision_score(positive, score)), 6),
        }
        fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=True)
        roc_rows += [
            {"class": name, "fpr": round(float(f), 6), "tpr": round(float(t), 6)}
            for f, t in zip(fpr, tpr, strict=True)
        ]
        precision, recall, _ = precision_recall_curve(positive, score)
        best_from_here = np.maximum.accumulate(precision[::-1])[::-1]  # recall is decreasing
        at_grid = [float(best_from_here[recall >= r].max()) for r in grid]
        pr_rows += [
            {"class": name, "recall": round(float(r), 2), "precision": round(p, 6)}
            for r, p in zip(grid, at_grid, strict=True)
        ]
    return scores, roc_rows, pr_rows


def misclassified_grid(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    *,
    limit: int = 36,
    tile: int = 96,
) -> Any:
    """A PIL image: the ``limit`` most confidently wrong test images, each captioned
    ``true -> predicted (confidence)``, most confident first (same order as the CSV)."""
    from PIL import Image

    pictures = []
    for i in _worst_mistakes(labels, probabilities, limit):
        pixels = images[i]
        picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels)
        pictures.append(picture.convert("RGB"))
    return _sheet(
        pictures,
        _captions(labels, probabilities, classes, limit),
        tile,
        "no misclassified images",
        Image.Resampling.NEAREST,
    )


def gradcam_grid(
    model: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    *,
    limit: int = 18,
    tile: int = 96,
) -> Any:
    """A PIL image: Grad-CAM heat maps (the ``grad-cam`` library) over the ``limit`` most
    confidently wrong test images, for the class the model wrongly chose: where it looked.

    The target layer is the deepest stage timm's ``feature_info`` names whose map still has 7
    cells on a side: at 224 px the last stage (``layer4`` for ResNets, ``blocks.6`` for
    EfficientNet-B0, ``stages.3`` for ConvNeXt, ``features.norm5`` for DenseNet); on 28 px
    digits ``layer1``, since deeper maps are 1-4 cells wide. Networks without spatial stages
    (vision transformers' token sequences) get a sheet saying so.
    """
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrong = _worst_mistakes(labels, probabilities, limit)
    layer = _last_spatial_layer(model, images[:1])
    if not len(wrong) or layer is None:
        empty = "no misclassified images" if layer else "no spatial layer for Grad-CAM here"
        return _sheet([], [], tile, empty, Image.Resampling.BILINEAR)
    predicted = probabilities.argmax(1)
    batch = torch.from_numpy(np.ascontiguousarray(images[wrong])).permute(0, 3, 1, 2).float()
    with GradCAM(model=model.eval(), target_layers=[layer]) as cam:
        maps = cam(
            input_tensor=batch, targets=[ClassifierOutputTarget(int(predicted[i])) for i in wrong]
        )
    pictures = []
    for i, heat in zip(wrong, maps, strict=True):
        pixels = images[i].astype(np.float32) / 255.0
        rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
        pictures.append(
            Image.fromarray(show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.6))
        )
    return _sheet(
        pictures,
        _captions(labels, probabilities, classes, limit),
        tile,
        "",
        Image.Resampling.BILINEAR,
    )


def _worst_mistakes(labels: np.ndarray, probabilities: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the wrongly classified images, most confidently wrong first."""
    predicted = probabilities.argmax(1)
    confidence = probabilities[np.arange(len(labels)), predicted]
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]


def _captions(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], limit: int
) -> list[str]:
    predicted = probabilities.argmax(1)
    return [
        f"{classes[labels[i]]}->{classes[predicted[i]]} {probabilities[i, predicted[i]]:.2f}"
        for i in _worst_mistakes(labels, probabilities, limit)
    ]


def _sheet(pictures: list[Any], captions: list[str], tile: int, empty: str, resample: Any) -> Any:
    """Six tiles a row, each picture resized to the tile with its caption below."""
    from PIL import Image, ImageDraw

    columns, caption = 6, 14
    rows = max(1, -(-len(pictures) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    if not pictures:
        draw.text((4, 4), empty, fill="black")
    for slot, (picture, text) in enumerate(zip(pictures, captions, strict=True)):
        x, y = (slot % columns) * tile, (slot // columns) * (tile + caption)
        sheet.paste(picture.resize((tile - 4, tile - 4), resample), (x + 2, y + 2))
        draw.text((x + 2, y + tile), text[:16], fill="black")
    return sheet


def _last_spatial_layer(model: Classifier, sample: np.ndarray) -> torch.nn.Module | None:
    """The deepest stage (timm's ``feature_info``) whose output map is at least
    :data:`GRADCAM_MIN_CELLS` cells on a side for ``sample`` (1 x H x W x C), else the stage
    with the largest map; None when the network has no spatial stages."""
    info = getattr(model.net, "feature_info", None)
    if not info or not isinstance(info, list):
        return None
    side = min(sample.shape[1:3])
    stages = sorted(info, key=lambda stage: stage["reduction"])
    fine = [stage for stage in stages if side // stage["reduction"] >= GRADCAM_MIN_CELLS]
    layer = model.net.get_submodule((fine or stages[:1])[-1]["module"])
    probe = torch.from_numpy(np.ascontiguousarray(sample)).permute(0, 3, 1, 2).float()
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        with torch.no_grad():
            model.eval()(probe)
    finally:
        handle.remove()
    return layer if seen and isinstance(seen[0], torch.Tensor) and seen[0].dim() == 4 else None
