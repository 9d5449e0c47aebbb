"""What the service tests share: encoded uploads, metric lookup, uvicorn on loopback and a
headless chromium."""

from __future__ import annotations

import io
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from imgpipe.serving.app import create_app
from imgpipe.serving.settings import ServeConfig
from tests.conftest import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ElementHandle


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def uploads(images: np.ndarray, prefix: str = "img") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("files", (f"{prefix}{i}.png", png_bytes(pixels), "image/png"))
        for i, pixels in enumerate(images)
    ]


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(buffer, fmt)
    return buffer.getvalue()


def big_png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def metric_value(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


class LiveServer:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, config: ServeConfig) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                create_app(config), host="127.0.0.1", port=self.port, log_level="warning"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def running_in_ci(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """CI systems set CI=true (or 1); CI=false, CI=0 or an empty CI mean a local run."""
    return environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not running_in_ci(),
    reason="needs Debian's chromium (./run.sh test installs it when it can)",
)


def element(parent: ElementHandle, selector: str) -> ElementHandle:
    found = parent.query_selector(selector)
    assert found is not None, f"no {selector} in the page's result card"
    return found


def text_of(parent: ElementHandle, selector: str) -> str:
    return element(parent, selector).inner_text()


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    """Debian's chromium driven by playwright, headless and without a sandbox (containers)."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "CI must have chromium for the upload-page tests"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()
