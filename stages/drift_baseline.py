"""Stage drift-baseline: per-image features (embedding, image statistics, predicted class,
confidence) of a seeded sample of the train and val data, computed with the exported ONNX
model; the reference that `imgpipe drift` compares live traffic against."""

import argparse
import logging
from pathlib import Path

from imgpipe.data.splits import load_split
from imgpipe.io import atomic_path, write_json
from imgpipe.monitoring.features import baseline_summary, feature_table, sample_images
from imgpipe.params import load_params
from imgpipe.runtime.onnx_model import OnnxClassifier
from imgpipe.stage import run_stage

log = logging.getLogger("imgpipe.stages.drift_baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx", type=Path, required=True, help="ONNX model from export-onnx")
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and val/")
    parser.add_argument("--out", type=Path, required=True, help="reference table (parquet)")
    parser.add_argument("--summary", type=Path, required=True, help="summary JSON")
    args = parser.parse_args()

    p = load_params().drift_baseline
    splits = [load_split(args.data / name).images for name in ("train", "val")]
    images = sample_images(splits, p.sample_size, p.seed)
    classifier = OnnxClassifier(args.onnx)
    table = feature_table(classifier, images, progress="drift reference")
    with atomic_path(args.out) as temporary:
        table.to_parquet(temporary, index=False)
    write_json(args.summary, baseline_summary(table, classifier.classes))
    log.info("reference table: %d rows x %d columns", *table.shape)


if __name__ == "__main__":
    run_stage(main)
