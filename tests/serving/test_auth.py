"""The bearer token: what it guards and where it comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imgpipe.data.splits import SplitArrays
from imgpipe.serving.app import create_app
from imgpipe.serving.settings import ServeConfig
from tests.serving.live import metric_value, uploads


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
