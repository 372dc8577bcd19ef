"""Prometheus metrics for `GET /metrics`, in the text exposition format (version 0.0.4), hand-written.

No prometheus_client dependency: five metric families, updated on the event loop's thread, are a
few dozen lines. What is exported:

- `onebert_requests_total{endpoint, status}`: answered requests
- `onebert_errors_total{endpoint, status}`: the 4xx and 5xx among them
- `onebert_request_duration_seconds{endpoint}`: a histogram of the time to answer
- `onebert_batch_size{batcher}`: a histogram of items per forward pass (embed, predict)
- `onebert_queue_depth{batcher}`: requests waiting now

The endpoint label is the route's path, or "other" for paths the server does not have (so a scan of
random URLs cannot grow the label set without bound).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative buckets per label value, with their sum and count."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.series: dict[str, list[float]] = {}  # label value -> [counts per bucket..., sum, count]

    def observe(self, label: str, value: float) -> None:
        row = self.series.setdefault(label, [0.0] * (len(self.bounds) + 2))
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                row[i] += 1
        row[-2] += value
        row[-1] += 1

    def lines(self, name: str, label_name: str) -> list[str]:
        out = []
        for label, row in sorted(self.series.items()):
            where = f'{label_name}="{_escape(label)}"'
            for bound, count in zip(self.bounds, row):
                out.append(f'{name}_bucket{{{where},le="{_number(bound)}"}} {_number(count)}')
            out.append(f'{name}_bucket{{{where},le="+Inf"}} {_number(row[-1])}')
            out.append(f"{name}_sum{{{where}}} {_number(row[-2])}")
            out.append(f"{name}_count{{{where}}} {_number(row[-1])}")
        return out


class ServerMetrics:
    """The server's counters; `render(queues)` is the /metrics body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_sizes = Histogram(BATCH_BUCKETS)

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.observe(endpoint, seconds)

    def record_batch(self, batcher: str, items: int) -> None:
        with self._lock:
            self.batch_sizes.observe(batcher, items)

    def render(self, queues: dict[str, int]) -> str:
        with self._lock:
            lines = _family("onebert_requests_total", "counter", "HTTP requests answered, by endpoint and status")
            lines += _counter_lines("onebert_requests_total", self.requests.items())
            lines += _family("onebert_errors_total", "counter", "HTTP requests answered with a 4xx or 5xx status")
            lines += _counter_lines("onebert_errors_total",
                                    ((key, n) for key, n in self.requests.items() if int(key[1]) >= 400))
            lines += _family("onebert_request_duration_seconds", "histogram", "time to answer a request")
            lines += self.latency.lines("onebert_request_duration_seconds", "endpoint")
            lines += _family("onebert_batch_size", "histogram", "items per forward pass of a batcher")
            lines += self.batch_sizes.lines("onebert_batch_size", "batcher")
        lines += _family("onebert_queue_depth", "gauge", "requests waiting for a batcher")
        lines += [f'onebert_queue_depth{{batcher="{_escape(name)}"}} {depth}' for name, depth in sorted(queues.items())]
        return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _counter_lines(name: str, items) -> list[str]:
    return [f'{name}{{endpoint="{_escape(endpoint)}",status="{status}"}} {count}'
            for (endpoint, status), count in sorted(items)]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class RequestMetrics:
    """ASGI middleware: counts every HTTP answer (the ones other middleware gives too: put it outermost)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, endpoint_of: Callable[[str], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoint_of = endpoint_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before any response is a server error

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.record_request(self.endpoint_of(scope.get("path", "")), status,
                                        time.perf_counter() - started)
