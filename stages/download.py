"""Stage download: fetch ``data.source`` (built-in, local folder or http(s) archive) into an
ImageFolder tree (``<class>/<image>`` or ``<split>/<class>/<image>``)."""

import argparse
from pathlib import Path

from imgpipe.data.sources import FetchOptions, fetch
from imgpipe.params import load_params
from imgpipe.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the tree to")
    args = parser.parse_args()

    data = load_params().data
    fetch(data.source, args.out, FetchOptions(data.sha256, data.max_extract_bytes))


if __name__ == "__main__":
    run_stage(main)
