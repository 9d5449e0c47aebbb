"""POST /predict in-process (TestClient): the predictions, formats, bad files and limits."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from imgpipe.data.splits import SplitArrays
from imgpipe.training.inference import predict_split
from imgpipe.training.model import Classifier, ModelMeta
from tests.serving.live import big_png_header, encoded, png_bytes, uploads


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
