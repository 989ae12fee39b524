"""One structured log line and Prometheus metrics per RPC; the metrics HTTP endpoint."""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_rpc_log = logging.getLogger("sendinchat.rpc")


class JsonFormatter(logging.Formatter):
    """Renders a record as one JSON object per line; RPC records carry their fields in `rpc`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "rpc", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> logging.handlers.QueueListener:
    """JSON lines on stderr for the whole process; stop the returned listener at exit to flush.

    A thread writes them, so a slow log sink never blocks the event loop.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level)
    listener.start()
    return listener


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "sendinchat_rpcs",
            "RPCs handled, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "sendinchat_rpc_duration_seconds",
            "RPC handling time, by method",
            ["method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.open_streams = Gauge(
            "sendinchat_open_streams", "Streaming RPCs in progress", ["method"], registry=self.registry
        )
        self.database_up = Gauge(
            "sendinchat_database_up", "1 while PostgreSQL answers the health probe", registry=self.registry
        )

    def serve(self, address: str) -> int:
        """Expose /metrics over HTTP on address (HOST:PORT, port 0 picks one); return the port."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        return int(server.server_port)


class RpcObserver:
    """Records one finished RPC: a log line and metrics. Label children are cached per method."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._counters: dict[tuple[str, grpc.StatusCode], Counter] = {}
        self._histograms: dict[str, Histogram] = {}

    def record(
        self,
        *,
        method: str,
        code: grpc.StatusCode,
        seconds: float,
        user_id: str | None,
        peer: str,
        reason: str = "",
    ) -> None:
        """Log and count one RPC. Never pass request bodies here: they may hold passwords."""
        counter = self._counters.get((method, code))
        if counter is None:
            counter = self._counters[(method, code)] = self._metrics.rpcs.labels(method, code.name)
        counter.inc()
        histogram = self._histograms.get(method)
        if histogram is None:
            histogram = self._histograms[method] = self._metrics.rpc_seconds.labels(method)
        histogram.observe(seconds)
        if _rpc_log.isEnabledFor(logging.INFO):
            fields = {
                "method": method,
                "code": code.name,
                "duration_ms": round(seconds * 1000, 3),
                "user_id": user_id,
                "peer": peer,
            }
            if reason:
                fields["reason"] = reason
            _rpc_log.info("rpc", extra={"rpc": fields})

    def stream_opened(self, method: str) -> None:
        """A streaming RPC started."""
        self._metrics.open_streams.labels(method).inc()

    def stream_closed(self, method: str) -> None:
        """A streaming RPC ended."""
        self._metrics.open_streams.labels(method).dec()
