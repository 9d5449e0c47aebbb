"""End to end: `imgpipe serve` and a real Prometheus loading the shipped rules (a test copy with
`for: 0s` and 20-second windows), bad uploads and unsure predictions, the alerts read back from
Prometheus's HTTP API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client import write_to_textfile

from imgpipe.monitoring.drift_metrics import drift_registry
from imgpipe.runtime.onnx_model import OnnxClassifier
from tests.conftest import free_port
from tests.deploy.prometheus import PROMETHEUS, RULES, needs_prometheus
from tests.monitoring.exporters import SUMMARY
from tests.serving.live import uploads

WINDOW = "20s"  # every range in the rules, so that a few seconds of traffic fill it
EXPECTED = {  # what the traffic below must raise: alert -> labels it must carry
    "ImgpipeRefusedInputs": {"reason": "not_an_image"},
    "ImgpipeConfidenceBelowBaseline": {},
    "ImgpipePredictedClassMixShift": {},
    "ImgpipeDriftDetected": {},
    "ImgpipeDriftJobStale": {},
}
QUIET = {  # what it must not
    "ImgpipeServerErrors",
    "ImgpipeModelChanged",  # a first deployment, not a change
    "ImgpipeSlowPredictions",
    "ImgpipeFeatureLogDropping",
    "ImgpipeBaselineMissing",
    "ImgpipeDown",
    "ImgpipeNotScraped",
}
NOT_AN_IMAGE = [("files", ("notes.txt", b"not an image", "text/plain"))]


def fast_rules(destination: Path) -> Path:
    """The shipped rules with every `for:` at 0s and every range at WINDOW; offsets at 10m,
    beyond the test, so that a model new to this Prometheus stays "changed" throughout."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[\d+[smhd]\]", f"[{WINDOW}]", rule["expr"])
            rule["expr"] = re.sub(r"offset \d+[smhd]", "offset 10m", rule["expr"])
            if "for" in rule:
                rule["for"] = "0s"
    destination.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return destination


def traffic(onnx_model: Path) -> tuple[list[Any], dict[str, Any]]:
    """Noise images the tiny model is unsure of, and a baseline it looked sure on and whose
    class mix is the opposite of theirs."""
    noise = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
    classifier = OnnxClassifier(onnx_model)
    probabilities, _ = classifier.run(noise)
    assert probabilities.max(axis=1).mean() < 0.9, "noise should leave the tiny model unsure"
    counts = np.bincount(probabilities.argmax(axis=1), minlength=len(classifier.classes))
    rarest = classifier.classes[int(counts.argmin())]
    shares = {name: float(name == rarest) for name in classifier.classes}
    return uploads(noise), {"mean_confidence": 0.99, "predicted_share": shares}


@contextmanager
def process(command: list[str], ready: str, name: str) -> Iterator[subprocess.Popen[str]]:
    """A server process, waited for until ``ready`` answers 200 (60 s at most)."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as running:
        try:
            deadline = time.monotonic() + 60
            while True:
                assert running.poll() is None, f"{name} exited: {running.communicate()[0]}"
                assert time.monotonic() < deadline, f"{name} did not start"
                try:
                    if httpx.get(ready).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            yield running
        finally:
            running.terminate()
            running.communicate(timeout=30)


@contextmanager
def static_files(folder: Path) -> Iterator[str]:
    """The drift textfile over HTTP, as node_exporter would expose it."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def prometheus_config(tmp_path: Path, service: str, drift: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(fast_rules(tmp_path / "rules.yml"))],
        "scrape_configs": [
            {"job_name": "imgpipe", "static_configs": [{"targets": [service]}]},
            {
                "job_name": "imgpipe_drift",
                "metrics_path": "/imgpipe_drift.prom",
                "static_configs": [{"targets": [drift]}],
            },
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def alerts(prometheus: str) -> dict[str, dict[str, Any]]:
    """Active alerts by name (pending or firing), with their labels and state."""
    found = httpx.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]
    return {a["labels"]["alertname"]: {**a["labels"], "state": a["state"]} for a in found}


def wait_for(prometheus: str, expected: set[str], act: Any, seconds: float) -> dict[str, Any]:
    """Poll the alerts (calling ``act`` between polls) until ``expected`` are all firing."""
    deadline = time.monotonic() + seconds
    while True:
        active = alerts(prometheus)
        firing = {name for name, alert in active.items() if alert["state"] == "firing"}
        if expected <= firing:
            return active
        assert time.monotonic() < deadline, (
            f"not firing after {seconds:.0f} s: {sorted(expected - firing)}; "
            f"active: {json.dumps(active, indent=1)}"
        )
        act()
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.timeout(240)
@needs_prometheus
def test_prometheus_raises_the_alerts_on_the_live_service(onnx_model: Path, tmp_path: Path) -> None:
    assert PROMETHEUS, "CI must have prometheus (Debian's package)"
    noise, baseline = traffic(onnx_model)
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    two_days_ago = time.time() - 2 * 86400  # a drift run long ago that found drift
    write_to_textfile(
        str(tmp_path / "imgpipe_drift.prom"), drift_registry(SUMMARY, finished=two_days_ago)
    )
    port, prometheus_port = free_port(), free_port()
    serve = [sys.executable, "-m", "imgpipe.cli", "serve", "--model", str(onnx_model)]
    serve += ["--port", str(port), "--baseline", str(tmp_path / "baseline.json")]
    serve += ["--no-feature-log", "--no-access-log", "--log-level", "warning"]
    service = f"http://127.0.0.1:{port}"
    prometheus = f"http://127.0.0.1:{prometheus_port}"

    def send() -> None:
        assert httpx.post(f"{service}/predict", files=noise).status_code == 200
        assert httpx.post(f"{service}/predict", files=NOT_AN_IMAGE).status_code == 415

    with (
        static_files(tmp_path) as drift,
        process(serve, f"{service}/health", "imgpipe serve") as served,
    ):
        config = prometheus_config(tmp_path, f"127.0.0.1:{port}", drift)
        command = [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        ]
        command += [f"--web.listen-address=127.0.0.1:{prometheus_port}"]
        with process(command, f"{prometheus}/-/ready", "prometheus"):
            active = wait_for(prometheus, set(EXPECTED), send, seconds=90)
            for name, labels in EXPECTED.items():
                assert labels.items() <= active[name].items(), active[name]
            assert sorted(QUIET & set(active)) == [], json.dumps(active, indent=1)
            served.terminate()  # the service goes away: the next scrapes fail
            wait_for(prometheus, {"ImgpipeDown"}, lambda: None, seconds=30)
