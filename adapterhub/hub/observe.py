"""What a hub tells its operators.

:class:`Observe` is an ASGI middleware that, for each request, writes one JSON line to the
``adapterhub.hub.access`` logger (JSON escapes every control character, so a hostile path
cannot forge a line) and counts the request in :class:`Metrics`, which ``/metrics`` shows in
the Prometheus text format.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

access_log = logging.getLogger("adapterhub.hub.access")


class Metrics:
    """Request counters for ``/metrics`` (per process; Prometheus sums the replicas)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_flight = 0

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self, method: str, handler: str, status: int, seconds: float, bytes_in: int,
            bytes_out: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(method, handler, status)] += 1
            self.seconds[(method, handler)] += seconds
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out

    def render(self, gauges: dict[str, int]) -> str:
        """The Prometheus text exposition format."""
        lines = ["# HELP adapterhub_requests_total HTTP requests by method, handler, status.",
                 "# TYPE adapterhub_requests_total counter"]
        with self._lock:
            for (method, handler, status), count in sorted(self.requests.items()):
                lines.append(f'adapterhub_requests_total{{method="{method}",'
                             f'handler="{handler}",status="{status}"}} {count}')
            lines += ["# HELP adapterhub_request_seconds_total Time spent serving requests.",
                      "# TYPE adapterhub_request_seconds_total counter"]
            for (method, handler), seconds in sorted(self.seconds.items()):
                lines.append(f'adapterhub_request_seconds_total{{method="{method}",'
                             f'handler="{handler}"}} {seconds:.6f}')
            counters = {"adapterhub_received_bytes_total": self.bytes_in,
                        "adapterhub_sent_bytes_total": self.bytes_out}
            in_flight = self.in_flight
        for name, value in counters.items():
            lines += [f"# TYPE {name} counter", f"{name} {value}"]
        lines += ["# TYPE adapterhub_requests_in_flight gauge",
                  f"adapterhub_requests_in_flight {in_flight}"]
        for name, value in gauges.items():
            lines += [f"# TYPE adapterhub_registry_{name} gauge",
                      f"adapterhub_registry_{name} {value}"]
        return "\n".join(lines) + "\n"


class Observe:
    """ASGI middleware: body limits, JSON access log, metrics."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        state = {"status": 0, "in": 0, "out": 0}

        async def counted_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                state["in"] += len(message.get("body", b""))
            return message

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["out"] += len(message.get("body", b""))
            await send(message)

        self.metrics.begin()
        try:
            await self.app(scope, counted_receive, counted_send)
        finally:
            seconds = time.perf_counter() - start
            endpoint = scope.get("endpoint")
            handler = getattr(endpoint, "__name__", None) or scope.get("state", {}).get(
                "handler", "none")  # "guard": refused before routing
            self.metrics.end(method, handler, state["status"] or 500, seconds, state["in"],
                             state["out"])
            client = scope.get("client")
            caller = scope.get("state", {}).get("caller")
            access_log.info(json.dumps({
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "method": method, "path": path, "status": state["status"] or 500,
                "handler": handler, "ms": round(seconds * 1000, 2), "bytes_in": state["in"],
                "bytes_out": state["out"],
                "client": f"{client[0]}:{client[1]}" if client else None,
                "token": caller.token_id if caller is not None else None,
            }, separators=(",", ":")))
