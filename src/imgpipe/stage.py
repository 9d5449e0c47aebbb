"""What every stage script shares: logging set-up and turning user errors into clean exits."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from imgpipe.errors import ImgpipeError

log = logging.getLogger("imgpipe")


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    # The ONNX exporter narrates every optimisation pass at INFO; only its warnings matter here.
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; an :class:`ImgpipeError` becomes one log line and exit status 1."""
    configure_logging()
    try:
        main()
    except ImgpipeError as error:
        log.error("%s", error)
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("interrupted; no output was marked complete")
        sys.exit(130)
