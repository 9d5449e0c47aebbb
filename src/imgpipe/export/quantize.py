"""Static int8 quantisation of the exported model, and the accuracy gate it must pass.

onnxruntime's ``quantize_static`` in QDQ format with uint8 activations and int8 per-channel
weights (U8S8, which fuses fully on x86; the default S8S8 barely fused here and dynamic int8
made CNNs slower), calibrated (min/max) on a stated number of training images. The int8 file
carries the fp32 file's metadata plus its quantisation settings, so it serves and predicts as
the fp32 one does. The gate: validation accuracy and calibration error (the graph's logits are
already calibrated) both close to fp32's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx

from imgpipe.data.splits import SplitArrays, load_split
from imgpipe.evaluation.calibration import calibration
from imgpipe.io import atomic_path
from imgpipe.runtime.cached_outputs import cached_outputs
from imgpipe.runtime.onnx_contract import INPUT_NAME, METADATA_KEY
from imgpipe.runtime.onnx_model import OnnxClassifier

if TYPE_CHECKING:
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.calibrate import TensorsData

log = logging.getLogger(__name__)

LATENCY_BATCH = 64  # images per call when timing both models
# Draws which training images calibrate. Fixed, so a rerun writes the same int8 file; changing
# it changes the calibration set, hence the int8 model and metrics/export.json.
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class Int8Report:
    fp32_accuracy: float
    int8_accuracy: float
    fp32_ece: float
    int8_ece: float
    agreement: float  # share of images with the same top-1 class
    fp32_ms_per_image: float
    int8_ms_per_image: float
    calibration_images: int


def export_int8(
    fp32: Path,
    folder: Path,
    train: Path,
    val: SplitArrays,
    *,
    enabled: bool,
    calibration_images: int,
    max_drop: float,
    max_ece_rise: float,
    float_convolutions: int | Literal["auto"],
    features: Path | None = None,
) -> dict[str, Any]:
    """Write the int8 model of ``fp32`` as ``folder``/model.onnx when ``enabled`` and it passes
    the accuracy gate (:func:`rejection`); ``folder`` is left empty otherwise. A refused int8
    model is a warning, not an error: the fp32 model is good, and an experiment with a weak
    model should still record its metrics.

    Args:
        fp32: the exported fp32 model.
        folder: the int8 folder (replaced atomically).
        train: the training split's folder, read only when ``enabled``, to calibrate on
            ``calibration_images`` of its images (:func:`calibration_rows`).
        val: the split both models are scored on.
        enabled: export.int8.
        calibration_images: export.calibration_images.
        max_drop: export.int8_max_drop, the validation accuracy int8 may lose.
        max_ece_rise: export.int8_max_ece_rise, the validation ECE int8 may add.
        float_convolutions: export.int8_float_convolutions (:func:`quantize_int8`), or
            ``auto``: the fewest of :func:`float_convolution_tries` that pass the gate.
        features: the feature cache; fp32's validation scores come from it when it holds
            them (:func:`fp32_validation_scores`).

    Returns:
        What goes into metrics/export.json: ``int8`` is ``off``, ``rejected`` or ``written``.
    """
    with atomic_path(folder) as temporary:
        temporary.mkdir()
        if not enabled:
            return {"int8": "off"}
        images = load_split(train).images
        rows = calibration_rows(len(images), calibration_images)
        candidate = temporary / "model.onnx"
        fp32_scores = fp32_validation_scores(fp32, val.images, features)
        with Int8Quantiser(fp32, images[rows]) as quantiser:
            tries = float_convolution_tries(float_convolutions, quantiser.convolutions)
            for count in tries:
                quantiser.write(candidate, count)
                report = compare_int8(fp32_scores, score(candidate, val.images), val, len(rows))
                refused = rejection(report, max_drop, max_ece_rise, folder / "model.onnx")
                if not refused:
                    break
                log.info("int8 with %s float: %s", _float_part(count), _gate_figures(report))
        if refused:
            candidate.unlink()
            if len(tries) > 1:
                refused += f" (export.int8_float_convolutions auto tried {tries})"
            log.warning(refused)
            return {"int8": "rejected", **summary(report, count)}
        size = candidate.stat().st_size
    log.info(
        "int8 with %s float: %s; %.3f ms vs %.3f ms per image",
        _float_part(count),
        _gate_figures(report),
        report.int8_ms_per_image,
        report.fp32_ms_per_image,
    )
    return {"int8": "written", "int8_size_bytes": size, **summary(report, count)}


def float_convolution_tries(
    float_convolutions: int | Literal["auto"], convolutions: int
) -> list[int]:
    """How many leading convolutions each int8 try leaves float: the number given, or for
    ``auto`` 1, 2, 4, ... up to half the network's ``convolutions`` (at least one try: beyond
    half, int8 would hardly be faster than fp32)."""
    if float_convolutions != "auto":
        return [float_convolutions]
    tries = [1]
    while tries[-1] * 2 <= convolutions // 2:
        tries.append(tries[-1] * 2)
    return tries


def _gate_figures(report: Int8Report) -> str:
    return (
        f"val accuracy {report.int8_accuracy:.4f} (fp32 {report.fp32_accuracy:.4f}), "
        f"ECE {report.int8_ece:.4f} (fp32 {report.fp32_ece:.4f}), "
        f"agreement {report.agreement:.4f}"
    )


def calibration_rows(available: int, wanted: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Which of ``available`` training images calibrate: ``wanted`` of them (all when there
    are fewer) drawn at random, in ascending order (sequential reads of a memory-mapped
    split)."""
    return np.sort(np.random.default_rng(seed).permutation(available)[:wanted])


def quantize_int8(
    fp32: Path, destination: Path, calibration: np.ndarray, *, float_convolutions: int
) -> None:
    """Write the U8S8 QDQ model of ``fp32`` to ``destination`` (one file), calibrated on
    ``calibration`` (``N x H x W x C`` uint8), its first ``float_convolutions`` convolutions
    left float (:class:`Int8Quantiser`)."""
    with Int8Quantiser(fp32, calibration) as quantiser:
        quantiser.write(destination, float_convolutions)


class Int8Quantiser:
    """Calibrates ``fp32`` once on ``calibration`` (``N x H x W x C`` uint8), then writes its
    U8S8 QDQ model with any number of leading convolutions left float (:meth:`write`).

    The early convolutions see the widest-ranging activations at the highest resolution, so
    they lose the most to int8, and cost the most time when kept float. The first one sees the
    raw pixel scale: quantising it cost the digits default 2 of 500 validation images. On
    5,000 photos, EfficientNet-Lite0's top-1 agreement with fp32 on val and test rose from
    0.989 with 1 float convolution to 0.992 (2), 0.996 (6) and 0.997 (8), while its time per
    image went from 3.7 ms to 4.2-5.4 ms (fp32: about 7 ms); more calibration images (1,024)
    or percentile or entropy calibration left it at 0.989-0.991. The activation ranges do not
    depend on which nodes stay float, so every :meth:`write` reuses the one calibration."""

    def __init__(self, fp32: Path, calibration: np.ndarray) -> None:
        self.fp32, self.calibration = fp32, calibration
        self._stack = contextlib.ExitStack()
        self._convolutions: list[str] = []

    def __enter__(self) -> Int8Quantiser:
        try:
            self._calibrate()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _calibrate(self) -> None:
        from onnxruntime.quantization.calibrate import save_tensors_data
        from onnxruntime.quantization.shape_inference import quant_pre_process

        scratch = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="imgpipe-")))
        self._hidden = self._stack.enter_context(_quiet_onnxruntime())
        self._prepared, self._ranges = scratch / "prepared.onnx", scratch / "ranges.json"
        quant_pre_process(str(self.fp32), str(self._prepared), skip_symbolic_shape=True)
        save_tensors_data(
            _activation_ranges(self._prepared, _batches(self.calibration), scratch), self._ranges
        )
        graph = onnx.load(self._prepared).graph
        self._convolutions = [n.name for n in graph.node if n.op_type == "Conv"]

    @property
    def convolutions(self) -> int:
        """How many convolutions the network has (known once calibrated)."""
        return len(self._convolutions)

    def write(self, destination: Path, float_convolutions: int) -> None:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        quantize_static(
            self._prepared,
            destination,
            None,  # the ranges come from calibration_cache_path
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=self._convolutions[:float_convolutions],
            calibration_cache_path=self._ranges,
        )
        _carry_metadata(self.fp32, destination, len(self.calibration), float_convolutions)

    def __exit__(self, error_type: type[BaseException] | None, *error: object) -> None:
        self._stack.close()
        if error_type is not None:  # a failed try: its error says what happened
            return
        hidden = self._hidden.count
        note = f" ({hidden} onnxruntime log lines left out)" if hidden else ""
        log.info("int8: quantised on %d calibration images%s", len(self.calibration), note)


# Images per calibration batch. The calibrator reduces every tensor to its min and max after
# each batch; with 8 images those tensors are still in the CPU's caches: EfficientNet-Lite0's
# 128 photos took 3.0-4.2 s instead of 4.1-5.3 s (32 a batch; 4 runs each, alternating) on
# 2 cores, with the very same ranges (a min or max does not depend on how images are grouped).
CALIBRATION_BATCH = 8


def _batches(calibration: np.ndarray) -> CalibrationDataReader:
    """``calibration`` in batches of about :data:`CALIBRATION_BATCH`, as the calibrator reads
    them."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            parts = max(1, len(calibration) // CALIBRATION_BATCH)
            self.batches = iter(np.array_split(calibration, parts))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            return {INPUT_NAME: np.ascontiguousarray(batch.transpose(0, 3, 1, 2))}

    return Batches()


def _activation_ranges(model: Path, batches: CalibrationDataReader, scratch: Path) -> TensorsData:
    """Every float tensor's min/max over ``batches``, by onnxruntime's own MinMax calibrator,
    with the graph optimisations on: quantize_static runs it with them all off, which took
    EfficientNet-Lite0 13.5 s instead of 6.9 s for 256 images on a 2-core CPU. The optimiser
    keeps what the calibrator reads (each range is a graph output), so only the kernels that
    compute the tensors change: the ranges moved by at most 2.3e-6 of their size."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    class OptimisedMinMax(MinMaxCalibrater):  # type: ignore[misc]
        def create_inference_session(self) -> None:
            self.infer_session = ort.InferenceSession(
                self.augmented_model_path,
                sess_options=ort.SessionOptions(),
                providers=self.execution_providers,
            )

    calibrator = OptimisedMinMax(model, augmented_model_path=str(scratch / "augmented.onnx"))
    calibrator.augment_graph()
    calibrator.create_inference_session()
    calibrator.collect_data(batches)
    return calibrator.compute_data()


class _Hidden(logging.Filter):
    """Drops onnxruntime's records and counts them."""

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        ours = f"{os.sep}onnxruntime{os.sep}" not in record.pathname
        self.count += not ours
        return ours


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[_Hidden]:
    """onnxruntime's quantiser logs dozens of INFO lines per model through the root logger (76
    for EfficientNet-Lite0: one per tensor it calibrates): they are kept out of the user's log,
    whichever handler it has, and counted."""
    hidden = _Hidden()
    root = logging.getLogger()
    handlers = list(root.handlers)
    root.addFilter(hidden)  # records logged on the root logger itself
    for handler in handlers:  # and those of onnxruntime's own loggers, which propagate
        handler.addFilter(hidden)
    try:
        yield hidden
    finally:
        root.removeFilter(hidden)
        for handler in handlers:
            handler.removeFilter(hidden)


def _carry_metadata(
    fp32: Path, int8: Path, calibration_images: int, float_convolutions: int
) -> None:
    meta = json.loads({p.key: p.value for p in onnx.load(fp32).metadata_props}[METADATA_KEY])
    meta["quantization"] = {
        "method": "onnxruntime quantize_static",
        "format": "QDQ",
        "activations": "uint8",
        "weights": "int8 per channel",
        "calibration": "min/max",
        "float": _float_part(float_convolutions),
        "calibration_images": calibration_images,
    }
    model = onnx.load(int8)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
    onnx.save_model(model, int8, save_as_external_data=False)


def _float_part(float_convolutions: int) -> str:
    if float_convolutions == 0:
        return "none"
    if float_convolutions == 1:
        return "first convolution"
    return f"first {float_convolutions} convolutions"


@dataclass(frozen=True)
class Scores:
    probabilities: np.ndarray
    ms_per_image: float


def score(model: Path, images: np.ndarray) -> Scores:
    """The ONNX ``model``'s probabilities for ``images`` and its time per image, timed after
    the first batch, which warms the session up (and is timed again when it is the only one).
    """
    classifier = OnnxClassifier(model)
    first, _ = classifier.run(images[:LATENCY_BATCH], LATENCY_BATCH)
    timed = images[LATENCY_BATCH:] if len(images) > LATENCY_BATCH else images
    started = time.perf_counter()
    rest, _ = classifier.run(timed, LATENCY_BATCH)
    elapsed = time.perf_counter() - started
    probabilities = np.concatenate([first, rest]) if len(images) > LATENCY_BATCH else first
    return Scores(probabilities, 1000 * elapsed / max(1, len(timed)))


def fp32_validation_scores(fp32: Path, images: np.ndarray, features: Path | None) -> Scores:
    """The fp32 model's scores on the validation ``images``: read from the ``features`` cache
    when it holds their backbone features and this model's head (a ``finetune: head`` model;
    the same bits, see :mod:`imgpipe.runtime.cached_outputs`), computed otherwise. Its time per
    image is measured on one batch either way (3.5 of the 4 s of scoring 500 photos saved)."""
    cached = cached_outputs(fp32, [images], [np.arange(len(images))], features)
    if cached is None:
        return score(fp32, images)
    return Scores(cached[0], score(fp32, images[:LATENCY_BATCH]).ms_per_image)


def compare_int8(
    fp32: Scores, int8: Scores, split: SplitArrays, calibration_images: int
) -> Int8Report:
    """Both models' scores on ``split``: accuracy, calibration error, top-1 agreement and time
    per image."""
    labels = split.labels
    fp32_top, int8_top = fp32.probabilities.argmax(1), int8.probabilities.argmax(1)
    return Int8Report(
        fp32_accuracy=float((fp32_top == labels).mean()),
        int8_accuracy=float((int8_top == labels).mean()),
        fp32_ece=calibration(labels, fp32.probabilities)[0],
        int8_ece=calibration(labels, int8.probabilities)[0],
        agreement=float((fp32_top == int8_top).mean()),
        fp32_ms_per_image=fp32.ms_per_image,
        int8_ms_per_image=int8.ms_per_image,
        calibration_images=calibration_images,
    )


def rejection(report: Int8Report, max_drop: float, max_ece_rise: float, path: Path) -> str | None:
    """Why the int8 model at ``path`` is refused (it loses more than ``max_drop`` validation
    accuracy, or its probabilities are off by more than ``max_ece_rise`` more ECE than
    fp32's), or None when it passes."""
    drop = report.fp32_accuracy - report.int8_accuracy
    rise = report.int8_ece - report.fp32_ece
    advice = (
        'the int8 model is not written and metrics/export.json says "int8": "rejected" (serve '
        "models/model.onnx, keep more early layers float with export.int8_float_convolutions "
        "or calibrate on more images with export.calibration_images, or set export.int8: false)"
    )
    if drop > max_drop:
        return (
            f"{path}: int8 accuracy {report.int8_accuracy:.4f} is {drop:.4f} below fp32's "
            f"{report.fp32_accuracy:.4f} on the validation split, more than "
            f"export.int8_max_drop {max_drop:g}; {advice}"
        )
    if rise > max_ece_rise:
        return (
            f"{path}: int8 calibration error {report.int8_ece:.4f} is {rise:.4f} above fp32's "
            f"{report.fp32_ece:.4f} on the validation split, more than "
            f"export.int8_max_ece_rise {max_ece_rise:g}; {advice}"
        )
    return None


def summary(report: Int8Report, float_convolutions: int) -> dict[str, Any]:
    """What goes into metrics/export.json (timings vary run to run: they are logged)."""
    return {
        "int8_calibration_images": report.calibration_images,
        "int8_float_convolutions": float_convolutions,
        "int8_val_accuracy": round(report.int8_accuracy, 6),
        "fp32_val_accuracy": round(report.fp32_accuracy, 6),
        "int8_val_ece": report.int8_ece,
        "fp32_val_ece": report.fp32_ece,
        "int8_top1_agreement": round(report.agreement, 6),
    }
