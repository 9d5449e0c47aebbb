"""The upload page and the OpenAPI docs, and the page driven in headless chromium."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi.testclient import TestClient

from imgpipe.data.splits import SplitArrays
from imgpipe.serving.settings import ServeConfig
from tests.serving.live import (
    LiveServer,
    element,
    headless_chromium,
    needs_chromium,
    png_bytes,
    running_in_ci,
    text_of,
    uploads,
)

if TYPE_CHECKING:
    from playwright.sync_api import Dialog


def test_upload_page_and_openapi(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/metrics"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_ci_is_parsed_not_just_present() -> None:
    assert [running_in_ci({"CI": v}) for v in ("true", "True", "1", "yes")] == [True] * 4
    assert [running_in_ci({"CI": v}) for v in ("false", "0", "", "no")] == [False] * 4
    assert running_in_ci({}) is False


# A PNG (base64) dropped on the page's drop zone as "dropped.png", as a browser would.
DROP_PNG = """(data) => {
    const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
    document.getElementById("drop").dispatchEvent(
        new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


@needs_chromium
def test_upload_page_in_headless_chromium(
    live_server: LiveServer, test_split: SplitArrays, tmp_path: Path
) -> None:
    """Several files chosen at once and one dropped: each gets its card with the top classes as
    bars, the server's latency and the model identity, or its own error in words; nothing is
    fetched from anywhere but the service. The screenshot is kept (IMGPIPE_TEST_ARTIFACTS, which
    CI uploads)."""
    import base64

    import httpx

    digit = png_bytes(test_split.images[-1])
    (tmp_path / "digit.png").write_bytes(digit)
    (tmp_path / "notes.txt").write_text("not an image")
    answer = httpx.post(f"{live_server.url}/predict", files=uploads(test_split.images[-1:]))
    expected = answer.json()["predictions"][0]["top"]
    model_sha = answer.json()["model_sha256"]
    artifacts = Path(os.environ.get("IMGPIPE_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 900, "height": 700})
        script_errors: list[str] = []
        requested: list[str] = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        page.on("request", lambda request: requested.append(request.url))
        page.goto(live_server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
        page.set_input_files("#files", [str(tmp_path / "digit.png"), str(tmp_path / "notes.txt")])
        good = page.wait_for_selector(".result[data-predicted]", timeout=15_000)
        bad = page.wait_for_selector(".result.failed", timeout=15_000)
        assert good is not None and bad is not None
        assert good.get_attribute("data-predicted") == expected[0]["class"]
        assert text_of(good, ".name") == "digit.png"
        rows = good.query_selector_all(".class")
        assert [text_of(r, ".label") for r in rows] == [e["class"] for e in expected]
        width = element(rows[0], ".bar").get_attribute("style")
        assert width is not None and f"width: {100 * expected[0]['probability']:.1f}%" in width
        status = text_of(good, ".status")
        assert re.search(r"[\d.]+ ms on the server, \d+ ms round trip", status), status
        assert model_sha[:12] in status
        assert text_of(bad, ".name") == "notes.txt"
        assert text_of(bad, ".problem") == (
            "not an image in an accepted format (PNG, JPEG, GIF, BMP, TIFF, WEBP) "
            "(content not recognised)"
        )
        # Drag and drop: a file dropped on the zone is classified the same way.
        page.evaluate(DROP_PNG, base64.b64encode(digit).decode())
        page.wait_for_function("document.querySelectorAll('.result[data-predicted]').length === 2")
        names = [n.inner_text() for n in page.query_selector_all(".result .name")]
        assert names[0] == "dropped.png" and sorted(names) == [
            "digit.png",
            "dropped.png",
            "notes.txt",
        ]
        page.screenshot(path=str(artifacts / "upload-page.png"), full_page=True)
        assert (artifacts / "upload-page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert script_errors == []
        local = (live_server.url, "blob:", "data:")
        assert [url for url in requested if not url.startswith(local)] == []


@needs_chromium
def test_the_page_asks_for_the_token_once(
    onnx_model: Path, test_split: SplitArrays, tmp_path: Path
) -> None:
    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(test_split.images[0]))
    asked: list[str] = []
    with (
        LiveServer(ServeConfig(model=onnx_model, token="page-token")) as server,
        headless_chromium() as browser,
    ):
        page = browser.new_page()

        def answer(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept("page-token")

        page.on("dialog", answer)
        page.goto(server.url + "/")
        # Three files at once meet three 401s and one question; the next upload reuses it.
        for files, classified in (([image] * 3, 3), ([image], 4)):
            page.set_input_files("#files", [str(f) for f in files])
            page.wait_for_function(
                f"document.querySelectorAll('.result[data-predicted]').length === {classified}",
                timeout=15_000,
            )
        assert asked == ["This service needs an access token:"]
