"""What the drift-metrics tests share: a drift summary as ``imgpipe drift`` writes it, a
Pushgateway stand-in that records what it is sent, and reading exposition text back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

SUMMARY: dict[str, Any] = {
    "drift_detected": True,
    "rows": {"reference": 300, "current": 120},
    "features": {
        "drifted_share": 0.666667,
        "drift_share": 0.5,
        "drift_detected": True,
        "columns": {
            "brightness": {
                "score": 0.31,
                "method": "Wasserstein distance (normed)",
                "threshold": 0.1,
                "drift_detected": True,
            },
            "predicted": {
                "score": 0.42,
                "method": "chi-square p_value",
                "threshold": 0.05,
                "drift_detected": False,
            },
        },
    },
    "embedding": {
        "method": "classifier ROC AUC",
        "score": 0.97,
        "threshold": 0.55,
        "drift_detected": True,
    },
}


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value of every sample in Prometheus text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


@contextmanager
def fake_pushgateway() -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """A loopback HTTP server answering 200 to everything; yields its URL and the (method,
    path, body) of each request it got."""
    received: list[tuple[str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        do_POST = do_PUT  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
