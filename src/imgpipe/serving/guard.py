"""ASGI middleware in front of the app: request body limits and per-request accounting."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from imgpipe.serving.metrics import ServiceMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Refused(HTTPException):
    """A request refused for a reason worth its own error counter."""

    def __init__(
        self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, detail, headers=headers)
        self.reason = reason


class BodyTooLarge(Refused):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body_too_large", f"request body larger than the limit of {limit} bytes"
        )


class RequestGuard:
    """ASGI middleware: refuses bodies above the size limit (by Content-Length, and by counting
    for chunked uploads) and records every request's status and latency."""

    def __init__(self, app: AsgiApp, metrics: ServiceMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        limit = self.max_body_bytes

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        received = 0

        async def receive_counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            declared = dict(scope.get("headers", [])).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await JSONResponse({"detail": BodyTooLarge(limit).detail}, 413)(
                    scope, receive, send_recording
                )
                self.metrics.errors.labels(reason="body_too_large").inc()
            else:
                await self.app(scope, receive_counting, send_recording)
        finally:
            if status >= 500:
                self.metrics.errors.labels(reason="internal").inc()
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)
