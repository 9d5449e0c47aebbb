"""schemathesis against the service's own OpenAPI schema, over loopback: whatever the schema
admits (and much it does not), the service answers without a server error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from imgpipe.serving.settings import ServeConfig
from tests.serving.live import LiveServer


@pytest.fixture(scope="module", params=[None, "schema-token"], ids=["open", "token"])
def live(
    request: pytest.FixtureRequest, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str | None]]:
    log = tmp_path_factory.mktemp("schema") / "requests.jsonl"
    config = ServeConfig(model=tiny_onnx, feature_log=log, token=request.param)
    with LiveServer(config) as server:
        yield server.url, request.param


def test_no_server_errors_and_responses_match_the_schema(live: tuple[str, str | None]) -> None:
    url, token = live
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # The operations are driven here rather than by schemathesis' pytest plugin, which this
    # pytest version breaks ('Function' object has no attribute '_nodeid').
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert {op.path for op in operations} >= {"/predict", "/health", "/metrics"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case[Any]) -> None:
            # Every check but positive_data_acceptance: the schema says "binary", and random
            # bytes are rightly refused as "not an image" (415).
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()

    # The fuzzing reached the upload endpoint, and the service counted no 5xx either.
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    requests = [line for line in lines if line.startswith("imgpipe_http_requests_total{")]
    predict = [line for line in requests if 'route="/predict"' in line]
    assert predict, "fuzzing never reached /predict"
    if token:  # the token was accepted: the service answered on the merits
        assert any('status="401"' not in line for line in predict), predict
    assert not [line for line in requests if 'status="5' in line]
