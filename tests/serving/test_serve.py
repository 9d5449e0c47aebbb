"""imgpipe serve: the FastAPI app on a tiny exported model, in-process (TestClient) and over
loopback (uvicorn) for the concurrency, browser and schema tests."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from imgpipe.data.splits import SplitArrays
from imgpipe.runtime.onnx_model import OnnxClassifier
from imgpipe.serving.app import create_app
from imgpipe.serving.batching import MicroBatcher
from imgpipe.serving.settings import ServeConfig
from imgpipe.training.inference import predict_split
from imgpipe.training.model import Classifier, ModelMeta
from tests.conftest import free_port, make_split

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Dialog, ElementHandle


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def uploads(images: np.ndarray, prefix: str = "img") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("files", (f"{prefix}{i}.png", png_bytes(pixels), "image/png"))
        for i, pixels in enumerate(images)
    ]


@pytest.fixture(scope="module")
def onnx_model(tiny_onnx: Path) -> Path:
    return tiny_onnx


@pytest.fixture(scope="module")
def test_split() -> SplitArrays:
    return make_split(per_class=40, seed=7)


@pytest.fixture
def client(onnx_model: Path, tmp_path: Path) -> Iterator[TestClient]:
    config = ServeConfig(
        model=onnx_model,
        max_upload_bytes=200_000,
        max_images=8,
        max_pixels=200 * 200,
        feature_log=tmp_path / "logs" / "requests.jsonl",
    )
    with TestClient(create_app(config)) as test_client:
        yield test_client


def test_predictions_on_the_test_split_equal_evaluates(
    client: TestClient, tiny_model: tuple[Classifier, ModelMeta], test_split: SplitArrays
) -> None:
    model, _ = tiny_model
    expected = predict_split(model, test_split, 64, torch.device("cpu")).numpy()
    served = []
    for start in range(0, len(test_split), 8):  # 8 = the client's images-per-request limit
        response = client.post(
            "/predict?top_k=2", files=uploads(test_split.images[start : start + 8])
        )
        assert response.status_code == 200, response.text
        served += response.json()["predictions"]
    probabilities = np.array(
        [
            [next(t["probability"] for t in p["top"] if t["class"] == c) for c in ("left", "right")]
            for p in served
        ]
    )
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    top1 = [p["top"][0]["class"] for p in served]
    assert top1 == [["left", "right"][i] for i in expected.argmax(1)]


def test_predict_response_shape_and_top_k(client: TestClient, test_split: SplitArrays) -> None:
    response = client.post("/predict", params={"top_k": 1}, files=uploads(test_split.images[:3]))
    body = response.json()
    assert response.status_code == 200
    assert [p["file"] for p in body["predictions"]] == ["img0.png", "img1.png", "img2.png"]
    assert all(len(p["top"]) == 1 for p in body["predictions"])
    assert body["model_sha256"] == client.get("/health").json()["model"]["sha256"]


def test_health_names_the_model(client: TestClient, onnx_model: Path) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok"
    model = health["model"]
    assert model["classes"] == ["left", "right"]
    assert (model["image_size"], model["channels"]) == (32, 1)
    assert model["checkpoint_sha256"] == "c0ffee"
    import hashlib

    assert model["sha256"] == hashlib.sha256(onnx_model.read_bytes()).hexdigest()


def test_health_reports_the_commit_from_the_environment(
    onnx_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGPIPE_MODEL_COMMIT", "abc1234")
    with TestClient(create_app(ServeConfig(model=onnx_model))) as c:
        assert c.get("/health").json()["model"]["commit"] == "abc1234"


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_every_accepted_format_is_classified(
    client: TestClient, test_split: SplitArrays, fmt: str
) -> None:
    image = test_split.images[0]
    response = client.post("/predict", files=[("files", ("x", encoded(image, fmt), "image/png"))])
    assert response.status_code == 200, response.text
    reference = client.post("/predict", files=uploads(test_split.images[:1])).json()
    top = response.json()["predictions"][0]["top"][0]
    assert top["class"] == reference["predictions"][0]["top"][0]["class"]


@pytest.mark.parametrize(
    ("content", "status", "named"),
    [
        (b"%PDF-1.4 not an image", 415, "not an image"),
        (b"", 422, "empty"),
        (
            png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32, 1), np.uint8))[:200],
            422,
            "cannot decode",
        ),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "accepted format"),
    ],
    ids=["pdf", "empty", "truncated-png", "eps"],
)
def test_bad_files_get_a_4xx_naming_the_file(
    client: TestClient, content: bytes, status: int, named: str
) -> None:
    response = client.post("/predict", files=[("files", ("bad.bin", content, "image/png"))])
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert detail.startswith("bad.bin: ") and named in detail
    assert client.get("/health").status_code == 200  # still serving


def test_a_format_pillow_reads_but_the_service_does_not_accept_is_415(
    client: TestClient, test_split: SplitArrays
) -> None:
    ppm = encoded(test_split.images[0], "PPM")  # Pillow opens it; not on the allowlist
    response = client.post("/predict", files=[("files", ("scan.ppm", ppm, "image/png"))])
    assert response.status_code == 415
    assert response.json()["detail"] == (
        "scan.ppm: not an image in an accepted format (PNG, JPEG, GIF, BMP, TIFF, WEBP) "
        "(content not recognised)"
    )


def big_png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_limits_are_refused_with_413(client: TestClient, test_split: SplitArrays) -> None:
    too_many = client.post("/predict", files=uploads(test_split.images[:9]))
    assert too_many.status_code == 413 and "limit is 8" in too_many.json()["detail"]

    for side in (1_000, 30_000):  # over our limit; also over Pillow's own bomb limit
        bomb = client.post(
            "/predict", files=[("files", ("bomb.png", big_png_header(side, side), "image/png"))]
        )
        assert bomb.status_code == 413
        assert bomb.json()["detail"].startswith("bomb.png: ") and "pixel" in bomb.json()["detail"]

    huge = client.post("/predict", files=[("files", ("big.png", os.urandom(300_000), "image/png"))])
    assert huge.status_code == 413 and "larger than the limit" in huge.json()["detail"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\n'
        for _ in range(30):
            yield os.urandom(10_000)
        yield b"\r\n--b--\r\n"

    streamed = client.post(
        "/predict", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert streamed.status_code == 413

    assert client.post("/predict", files=uploads(test_split.images[:1])).status_code == 200


def test_missing_files_and_bad_top_k_are_422(client: TestClient, test_split: SplitArrays) -> None:
    assert client.post("/predict").status_code == 422
    response = client.post("/predict?top_k=0", files=uploads(test_split.images[:1]))
    assert response.status_code == 422
    assert "top_k" in json.dumps(response.json()["detail"])
    all_classes = client.post("/predict?top_k=5", files=uploads(test_split.images[:1]))
    assert len(all_classes.json()["predictions"][0]["top"]) == 2


def metric_value(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_prometheus_metrics_count_requests_errors_classes_and_confidence(
    client: TestClient, test_split: SplitArrays
) -> None:
    client.post("/predict", files=uploads(test_split.images[:4]))
    client.post("/predict", files=[("files", ("bad.txt", b"hello", "text/plain"))])
    text = client.get("/metrics").text
    assert metric_value(text, 'imgpipe_http_requests_total{route="/predict",status="200"}') == 1
    assert metric_value(text, 'imgpipe_http_requests_total{route="/predict",status="415"}') == 1
    assert metric_value(text, 'imgpipe_errors_total{reason="not_an_image"}') == 1
    assert metric_value(text, "imgpipe_predictions_total{") == 4
    assert 'imgpipe_predictions_total{predicted="left"}' in text
    assert metric_value(text, "imgpipe_prediction_confidence_count") == 4
    assert metric_value(text, 'imgpipe_http_request_duration_seconds_count{route="/predict"}') == 2


def test_feature_log_has_the_drift_baseline_columns(
    onnx_model: Path, tmp_path: Path, test_split: SplitArrays
) -> None:
    from imgpipe.monitoring.features import feature_table

    log = tmp_path / "requests.jsonl"
    config = ServeConfig(
        model=onnx_model, feature_log=log, feature_log_max_bytes=20_000, feature_log_backups=50
    )
    with TestClient(create_app(config)) as c:
        for start in range(0, 24, 6):
            assert (
                c.post("/predict", files=uploads(test_split.images[start : start + 6])).status_code
                == 200
            )
    # Closing the app flushed the writer; small files forced rotations.
    files = sorted(tmp_path.glob("requests*.jsonl"))
    assert len(files) > 1 and (tmp_path / "requests.1.jsonl").is_file()
    logged = pd.concat([pd.read_json(f, lines=True) for f in files]).sort_values(
        "time", kind="stable"
    )
    expected = feature_table(OnnxClassifier(onnx_model), test_split.images[:24])
    assert len(logged) == 24
    assert set(expected.columns) <= set(logged.columns)
    key = ["brightness", "contrast"]
    pd.testing.assert_frame_equal(
        logged[expected.columns].sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
        check_exact=False,
        atol=1e-5,
        check_dtype=False,
    )


def test_feature_log_rotation_stops_at_the_backup_cap(
    onnx_model: Path, tmp_path: Path, test_split: SplitArrays
) -> None:
    log = tmp_path / "requests.jsonl"
    config = ServeConfig(
        model=onnx_model, feature_log=log, feature_log_max_bytes=5_000, feature_log_backups=2
    )
    with TestClient(create_app(config)) as c:
        for start in range(0, 40, 2):  # ~2.5 kB of rows per request: far more than 3 files hold
            c.post("/predict", files=uploads(test_split.images[start : start + 2]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "requests.1.jsonl",
        "requests.2.jsonl",
        "requests.jsonl",
    ]
    for file in tmp_path.iterdir():
        assert 0 < file.stat().st_size <= 5_000 + 3_000  # a round of rows may pass the limit
        assert all(json.loads(line)["request"] for line in file.read_text().splitlines())


def test_rows_are_dropped_and_counted_when_the_writer_falls_behind(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from imgpipe.serving.feature_log import FeatureLog
    from imgpipe.serving.metrics import ServiceMetrics

    metrics = ServiceMetrics(["left", "right"])
    feature_log = FeatureLog(
        tmp_path / "requests.jsonl",
        ["left", "right"],
        max_bytes=10**6,
        backups=1,
        on_drop=metrics.feature_log_dropped.inc,
        capacity=2,
    )
    written = threading.Event()
    release = threading.Event()
    emit = feature_log._handler.emit

    def slow_emit(record: object) -> None:  # the disk stalls until released
        written.set()
        release.wait(10)
        emit(record)  # type: ignore[arg-type]

    feature_log._handler.emit = slow_emit  # type: ignore[method-assign]
    images = make_split(2).images[:3]
    outputs = (np.full((3, 2), 0.5), np.zeros((3, 4)))
    feature_log.submit({"request": "first"}, images, outputs)
    assert written.wait(10)  # the writer holds the first request; the queue takes two more
    for i in range(5):
        feature_log.submit({"request": f"r{i}"}, images, outputs)
    release.set()
    feature_log.close()
    rows = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [row["request"] for row in rows[::3]] == ["first", "r0", "r1"]
    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "imgpipe_feature_log_dropped_images_total") == 3 * 3


def test_micro_batcher_joins_concurrent_requests_up_to_its_cap() -> None:
    calls: list[int] = []

    def infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(batch))
        time.sleep(0.02)
        return batch.reshape(len(batch), -1).astype(float), batch.reshape(len(batch), -1) * 2.0

    sizes = [1 + i % 3 for i in range(20)] + [20]  # the last request alone exceeds the cap

    async def scenario() -> list[tuple[np.ndarray, np.ndarray]]:
        async with MicroBatcher(infer, max_batch=16, window_s=0.01) as batcher:
            return await asyncio.gather(
                *(batcher.predict(np.full((size, 1), i)) for i, size in enumerate(sizes))
            )

    results = asyncio.run(scenario())
    for i, (probabilities, embeddings) in enumerate(results):  # each gets its own rows back
        assert probabilities.shape == (sizes[i], 1) and (probabilities == i).all()
        assert (embeddings == 2 * i).all()
    assert sum(calls) == sum(sizes)
    assert len(calls) < 10 and max(calls[:-1]) > 1  # joined
    assert 20 in calls and all(size <= 16 for size in calls if size != 20)  # capped, not split


def test_micro_batcher_passes_inference_errors_to_every_waiter() -> None:
    def infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("model exploded")

    async def scenario() -> list[BaseException | tuple[np.ndarray, np.ndarray]]:
        async with MicroBatcher(infer, max_batch=8, window_s=0.01) as batcher:
            return await asyncio.gather(
                *(batcher.predict(np.zeros((1, 1))) for _ in range(3)), return_exceptions=True
            )

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(scenario()))


def test_upload_page_and_openapi(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/metrics"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


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


@pytest.fixture
def live_server(onnx_model: Path, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(
        ServeConfig(model=onnx_model, feature_log=tmp_path / "requests.jsonl")
    ) as server:
        yield server


def test_concurrent_requests_over_loopback_are_batched(
    live_server: LiveServer, test_split: SplitArrays
) -> None:
    import httpx

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post("/predict", files=uploads(test_split.images[i : i + 1]))
                    for i in range(48)
                )
            )

    responses = asyncio.run(load())
    assert [r.status_code for r in responses] == [200] * 48
    metrics = httpx.get(f"{live_server.url}/metrics").text
    batches = metric_value(metrics, "imgpipe_inference_batch_images_count")
    assert metric_value(metrics, "imgpipe_inference_batch_images_sum") == 48
    assert batches < 48  # some requests shared an onnxruntime call


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


def test_ci_is_parsed_not_just_present() -> None:
    assert [running_in_ci({"CI": v}) for v in ("true", "True", "1", "yes")] == [True] * 4
    assert [running_in_ci({"CI": v}) for v in ("false", "0", "", "no")] == [False] * 4
    assert running_in_ci({}) is False


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
        page.evaluate(
            """(data) => {
                const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
                document.getElementById("drop").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: transfer, bubbles: true,
                                           cancelable: true}));
            }""",
            base64.b64encode(digit).decode(),
        )
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


def test_drift_reads_the_service_log_and_flags_inverted_traffic(
    onnx_model: Path, tmp_path: Path
) -> None:
    from imgpipe.cli import main
    from imgpipe.monitoring.features import feature_table
    from tests.conftest import pattern_images

    def traffic(seed: int) -> np.ndarray:
        return np.concatenate([pattern_images(60, c, seed=seed) for c in (0, 1)])

    reference = tmp_path / "reference.parquet"
    feature_table(OnnxClassifier(onnx_model), traffic(seed=1)).to_parquet(reference)
    outcomes = {}
    for name, images in {"same": traffic(seed=2), "inverted": 255 - traffic(seed=2)}.items():
        log = tmp_path / name / "requests.jsonl"
        with TestClient(create_app(ServeConfig(model=onnx_model, feature_log=log))) as c:
            for start in range(0, len(images), 30):
                c.post("/predict", files=uploads(images[start : start + 30]))
        outcomes[name] = main(
            [
                "drift",
                "--current",
                str(log),
                "--reference",
                str(reference),
                "--model",
                str(onnx_model),
                "--out",
                str(tmp_path / name / "report"),
            ]
        )
    assert outcomes == {"same": 0, "inverted": 1}


def test_bench_serve_reports_levels_and_the_ratio(onnx_model: Path, tmp_path: Path) -> None:
    from bench.__main__ import main as bench_main

    out = tmp_path / "bench.json"
    arguments = ["--model", str(onnx_model), "--requests", "40", "--concurrency", "1", "4"]
    assert bench_main(["serve", *arguments, "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["onnxruntime_batch"]["batch"] == 64
    assert [level["concurrency"] for level in results["levels"]] == [1, 4]
    for level in results["levels"]:
        assert level["errors"] == 0 and level["requests"] == 40
        assert 0 < level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
        expected = level["requests_per_second"] / results["onnxruntime_batch"]["images_per_second"]
        assert level["ratio_to_onnxruntime_batch"] == pytest.approx(expected, abs=1e-3)
    assert results["best_ratio_to_onnxruntime_batch"] == max(
        level["ratio_to_onnxruntime_batch"] for level in results["levels"]
    )


def test_live_service_process_never_imports_torch(onnx_model: Path, tmp_path: Path) -> None:
    """`imgpipe serve` as deployed, serving requests: no torch, timm or onnx module was ever
    imported (Python's import log) and no libtorch is mapped into the process."""
    import subprocess
    import sys

    import httpx

    port = free_port()
    command = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "imgpipe.cli",
        "serve",
        "--model",
        str(onnx_model),
        "--port",
        str(port),
        "--feature-log",
        str(tmp_path / "requests.jsonl"),
    ]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as server:
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None and time.monotonic() < deadline, "no service"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            response = httpx.post(
                f"http://127.0.0.1:{port}/predict", files=uploads(make_split(2).images)
            )
            assert response.status_code == 200
            maps = Path(f"/proc/{server.pid}/maps").read_text()
        finally:
            server.terminate()
        log = server.communicate(timeout=30)[1]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in log.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert {"fastapi", "onnxruntime", "imgpipe"} <= imported  # the log is the right one
    assert imported & {"torch", "torchvision", "timm", "onnx", "onnxscript", "pandas"} == set()
    assert "libtorch" not in maps


def test_health_names_head_when_dvc_lock_records_this_very_model(
    onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import subprocess

    from imgpipe.serving.provenance import model_commit

    monkeypatch.delenv("IMGPIPE_MODEL_COMMIT", raising=False)
    served = tmp_path / "models" / "model.onnx"
    served.parent.mkdir()
    shutil.copyfile(onnx_model, served)
    md5 = hashlib.md5(served.read_bytes()).hexdigest()
    lock = {"stages": {"export-onnx": {"outs": [{"path": "models/model.onnx", "md5": md5}]}}}
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))  # JSON is YAML too
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (["init", "-q"], ["add", "dvc.lock"], ["commit", "-qm", "lock"]):
        subprocess.run([*git, *command], cwd=tmp_path, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    with TestClient(create_app(ServeConfig(model=served))) as c:
        assert c.get("/health").json()["model"]["commit"] == head
    served.write_bytes(served.read_bytes() + b"\0")  # not the file dvc.lock records
    assert model_commit(served) is None
    monkeypatch.setenv("IMGPIPE_MODEL_COMMIT", "abc1234")
    assert model_commit(served) == "abc1234"


def test_bench_serve_compares_int8_with_fp32_in_one_run(onnx_model: Path, tmp_path: Path) -> None:
    from bench.__main__ import main as bench_main

    out = tmp_path / "bench.json"
    arguments = ["--model", str(onnx_model), "--requests", "20", "--concurrency", "2", "--int8"]
    assert bench_main(["serve", *arguments, "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["fp32"]["levels"][0]["errors"] == 0 == results["int8"]["levels"][0]["errors"]
    ratio = results["int8_over_fp32"]["onnxruntime_batch"]
    expected = (
        results["int8"]["onnxruntime_batch"]["images_per_second"]
        / results["fp32"]["onnxruntime_batch"]["images_per_second"]
    )
    assert ratio == pytest.approx(expected, abs=0.01)


def test_a_token_guards_predict_but_not_health(onnx_model: Path, test_split: SplitArrays) -> None:
    config = ServeConfig(model=onnx_model, token="s3cret-token")
    with TestClient(create_app(config)) as c:
        files = uploads(test_split.images[:1])
        missing = c.post("/predict", files=files)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["detail"] == "missing or wrong bearer token"
        wrong = c.post("/predict", files=files, headers={"Authorization": "Bearer s3cret-tokem"})
        assert wrong.status_code == 401
        right = c.post("/predict", files=files, headers={"Authorization": "Bearer s3cret-token"})
        assert right.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200
        text = c.get("/metrics").text
        assert metric_value(text, 'imgpipe_errors_total{reason="unauthorized"}') == 2
        schema = c.get("/openapi.json").json()
        assert "401" in schema["paths"]["/predict"]["post"]["responses"]
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert "400" in schema["paths"]["/predict"]["post"]["responses"]
    guarded = ServeConfig(model=onnx_model, token="t", token_for_metrics=True)
    with TestClient(create_app(guarded)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer t"}).status_code == 200


def test_the_token_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgpipe.cli import _access_token
    from imgpipe.errors import ImgpipeError

    monkeypatch.delenv("IMGPIPE_TOKEN", raising=False)
    assert _access_token(None) is None
    monkeypatch.setenv("IMGPIPE_TOKEN", "from-env")
    assert _access_token(None) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert _access_token(tmp_path / "token") == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ImgpipeError, match="the file is empty"):
        _access_token(tmp_path / "empty")


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
