"""The upload page and the OpenAPI docs, and the page driven in headless chromium (decisions
included, for a model with an operating point)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
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


def test_the_api_docs_come_from_the_service_itself(client: TestClient) -> None:
    """Swagger UI and ReDoc from files the service serves, with no CDN in their pages."""
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        scripts = re.findall(r'<script[^>]+src="([^"]+)"', html)
        assert scripts and all(src.startswith("/docs-assets/") for src in scripts), (page, scripts)
        for src in scripts:
            asset = client.get(src)
            assert asset.status_code == 200 and len(asset.content) > 100_000, src
        assert "cdn" not in html.lower(), page


@needs_chromium
def test_the_api_docs_render_with_nothing_but_the_service(live_server: LiveServer) -> None:
    """In a browser: the docs page lists the operations, and every request it makes goes to the
    service (with a CDN's script, this page was blank where nothing may call out)."""
    with headless_chromium() as browser:
        page = browser.new_page()
        requested: list[str] = []
        script_errors: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        page.goto(live_server.url + "/docs")
        page.wait_for_selector(".opblock-summary-path[data-path='/predict']", timeout=15_000)
        assert script_errors == []
        local = (live_server.url, "data:")
        assert [url for url in requested if not url.startswith(local)] == []


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
        # No operating point in this model: no decision on the card.
        assert (
            good.get_attribute("data-decision") is None and good.query_selector(".decision") is None
        )
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


# "positive for right (0.4081 ≥ threshold 0.4080)"
DECISION_TEXT = re.compile(r"(positive|negative) for (\w+) \((\d\.\d+) (≥|<) threshold (\d\.\d+)\)")


@needs_chromium
def test_the_page_shows_the_services_decision(
    screening_onnx: Path,
    screened_images: np.ndarray,
    positive_probabilities: np.ndarray,
    tmp_path: Path,
) -> None:
    """The two images either side of the threshold, closer to it than two decimals tell: each
    card shows the service's decision, the probability and the threshold, with the digits it
    takes to tell them apart."""
    import httpx

    order = np.argsort(positive_probabilities)
    middle = len(order) // 2
    files = {"under.png": order[middle - 1], "over.png": order[middle]}
    for name, index in files.items():
        (tmp_path / name).write_bytes(png_bytes(screened_images[index]))
    with (
        LiveServer(ServeConfig(model=screening_onnx)) as server,
        headless_chromium() as browser,
    ):
        uploaded = [
            ("files", (name, (tmp_path / name).read_bytes(), "image/png")) for name in files
        ]
        answer = httpx.post(f"{server.url}/predict", files=uploaded).json()
        threshold = answer["operating_point"]["threshold"]
        expected = {p["file"]: p for p in answer["predictions"]}
        assert [expected[name]["decision"] for name in files] == ["negative", "positive"]
        page = browser.new_page()
        page.goto(server.url + "/")
        page.set_input_files("#files", [str(tmp_path / name) for name in files])
        page.wait_for_function(
            "document.querySelectorAll('.result[data-decision]').length === 2", timeout=15_000
        )
        for card in page.query_selector_all(".result"):
            prediction = expected[text_of(card, ".name")]
            assert card.get_attribute("data-decision") == prediction["decision"]
            shown = DECISION_TEXT.fullmatch(text_of(card, ".decision"))
            assert shown is not None, text_of(card, ".decision")
            decision, positive_class, probability, sign, shown_threshold = shown.groups()
            assert (decision, positive_class) == (prediction["decision"], "right")
            assert sign == ("≥" if decision == "positive" else "<")
            assert probability != shown_threshold  # as many digits as it takes
            half_digit = 0.5 * 10 ** -len(probability.split(".")[1])
            assert abs(float(probability) - prediction["positive_probability"]) <= half_digit
            assert abs(float(shown_threshold) - threshold) <= half_digit
