"""imgpipe serve as deployed, in its own process."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import free_port, make_split
from tests.serving.live import uploads


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
