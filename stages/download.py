"""Stage download: fetch ``data.source`` into an ImageFolder tree (``<class>/<image>``)."""

import argparse
from pathlib import Path

from imgpipe.data import fetch
from imgpipe.params import load_params
from imgpipe.runner import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the tree to")
    args = parser.parse_args()

    params = load_params()
    fetch(params.data.source, args.out)


if __name__ == "__main__":
    run_stage(main)
