"""GET /health (the model's identity and commit) and GET /metrics (Prometheus counters)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imgpipe.data.splits import SplitArrays
from imgpipe.serving.app import create_app
from imgpipe.serving.settings import ServeConfig
from tests.serving.live import metric_value, uploads


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


def commit_lock(repo: Path, outs: list[dict[str, str]]) -> str:
    """A git repository at ``repo`` whose one commit holds a dvc.lock recording ``outs`` as
    export-onnx's outputs; its HEAD."""
    import subprocess

    lock = {"stages": {"export-onnx": {"outs": outs}}}
    (repo / "dvc.lock").write_text(json.dumps(lock))  # JSON is YAML too
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (["init", "-q"], ["add", "dvc.lock"], ["commit", "-qm", "lock"]):
        subprocess.run([*git, *command], cwd=repo, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_health_names_head_when_dvc_lock_records_this_very_model(
    onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from imgpipe.serving.provenance import model_commit

    monkeypatch.delenv("IMGPIPE_MODEL_COMMIT", raising=False)
    served = tmp_path / "models" / "model.onnx"
    served.parent.mkdir()
    shutil.copyfile(onnx_model, served)
    md5 = hashlib.md5(served.read_bytes()).hexdigest()
    head = commit_lock(tmp_path, [{"path": "models/model.onnx", "md5": md5}])
    with TestClient(create_app(ServeConfig(model=served))) as c:
        assert c.get("/health").json()["model"]["commit"] == head
    served.write_bytes(served.read_bytes() + b"\0")  # not the file dvc.lock records
    assert model_commit(served) is None
    monkeypatch.setenv("IMGPIPE_MODEL_COMMIT", "abc1234")
    assert model_commit(served) == "abc1234"


def test_the_commit_of_a_model_in_a_folder_output(
    onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """models/int8/model.onnx: dvc.lock records the folder, DVC's cache lists its files."""
    import hashlib

    from imgpipe.serving.provenance import model_commit

    monkeypatch.delenv("IMGPIPE_MODEL_COMMIT", raising=False)
    served = tmp_path / "models" / "int8" / "model.onnx"
    served.parent.mkdir(parents=True)
    shutil.copyfile(onnx_model, served)
    listing = [{"md5": hashlib.md5(served.read_bytes()).hexdigest(), "relpath": "model.onnx"}]
    manifest = json.dumps(listing).encode()
    folder_md5 = hashlib.md5(manifest).hexdigest() + ".dir"
    head = commit_lock(tmp_path, [{"path": "models/int8", "md5": folder_md5}])
    assert model_commit(served) is None  # the cache does not hold the folder's list: unknown
    cached = tmp_path / ".dvc" / "cache" / "files" / "md5" / folder_md5[:2] / folder_md5[2:]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(manifest)
    assert model_commit(served) == head
    served.write_bytes(served.read_bytes() + b"\0")  # not the file the folder lists
    assert model_commit(served) is None


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
