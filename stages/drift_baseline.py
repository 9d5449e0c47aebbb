"""Stage drift-baseline: per-image features (embedding, image statistics, predicted class,
confidence) of a seeded sample of the train and val data, computed with the exported ONNX
model (or read from the feature cache, when the pipeline already computed the sample's
backbone features: the same values); the reference that `imgpipe drift` compares live
traffic against."""

import argparse
import logging
from pathlib import Path

from imgpipe.data.splits import load_split
from imgpipe.io import atomic_path, write_json
from imgpipe.monitoring.features import baseline_summary, feature_table, sample_rows, take_rows
from imgpipe.params import load_params
from imgpipe.runtime.cached_outputs import cached_outputs
from imgpipe.runtime.onnx_model import OnnxClassifier
from imgpipe.stage import run_stage

log = logging.getLogger("imgpipe.stages.drift_baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx", type=Path, required=True, help="ONNX model from export-onnx")
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and val/")
    parser.add_argument("--out", type=Path, required=True, help="reference table (parquet)")
    parser.add_argument("--summary", type=Path, required=True, help="summary JSON")
    parser.add_argument(
        "--features", type=Path, help="the feature cache, whose entries are reused when present"
    )
    args = parser.parse_args()

    p = load_params().drift_baseline
    splits = [load_split(args.data / name).images for name in ("train", "val")]
    rows = sample_rows([len(split) for split in splits], p.sample_size, p.seed)
    images = take_rows(splits, rows)
    classifier = OnnxClassifier(args.onnx)
    outputs = cached_outputs(args.onnx, splits, rows, args.features)
    table = feature_table(classifier, images, progress="drift reference", outputs=outputs)
    with atomic_path(args.out) as temporary:
        table.to_parquet(temporary, index=False)
    write_json(args.summary, baseline_summary(table, classifier.classes))
    log.info("reference table: %d rows x %d columns", *table.shape)


if __name__ == "__main__":
    run_stage(main)
