"""JSON log lines on stderr (gRPC core's and workers' lines included), per-RPC log and metrics, /metrics."""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import queue
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, multiprocess
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

_rpc_log = logging.getLogger("sendinchat.rpc")
log = logging.getLogger(__name__)

# gRPC's C core logs through absl: `E1202 00:31:27.439939   11571 add_port.cc:83] Failed to add port ...`.
_CORE_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+\s+\d+ ([^\s\]]+:\d+)\] ?(.*)")
_CORE_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
# absl's once-per-process notice, and other programs' `LEVEL: message` lines.
_TAGGED_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|FATAL|CRITICAL): (.*)")
_OWN_LINE_PREFIX = b'{"time": "'


def iso_time(seconds: float) -> str:
    """`seconds` since the epoch as ISO-8601 UTC with milliseconds: 2026-12-02T00:20:40.123Z."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


def json_line(level: str, logger: str, message: str, **fields: object) -> str:
    """One log line (no newline) in the shape JsonFormatter writes, stamped now."""
    entry: dict[str, object] = {"time": iso_time(time.time()), "level": level, "logger": logger}
    entry["message"] = message
    entry.update(fields)
    return json.dumps(entry, default=str)


class JsonFormatter(logging.Formatter):
    """Renders a record as one JSON object per line; RPC records carry their fields in `rpc`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": iso_time(record.created),
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


def foreign_line(raw: bytes) -> str | None:
    """A line written to fd 2 by something other than `logging`, as a JSON log line (None: blank).

    JSON objects pass unchanged; gRPC core (absl) lines keep their severity and source location;
    anything else (a traceback printed at exit, a child process's complaint) is logged as ERROR.
    """
    text = raw.decode(errors="replace").rstrip("\r\n")
    if not text.strip():
        return None
    if raw.startswith(_OWN_LINE_PREFIX):
        return text
    if text.lstrip().startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return text
    core = _CORE_LINE.fullmatch(text)
    if core is not None:
        return json_line(_CORE_LEVELS[core[1]], "grpc", core[3], source=core[2])
    tagged = _TAGGED_LINE.fullmatch(text)
    if tagged is not None:
        level = {"FATAL": "CRITICAL"}.get(tagged[1], tagged[1])
        return json_line(level, "stderr", tagged[2])
    return json_line("ERROR", "stderr", text)


def with_fields(line: str, fields: str) -> str:
    """A JSON-object `line` with `fields` (`"key": value, ...`, JSON text) appended, without parsing it."""
    body = line.rstrip()[:-1].rstrip()
    return body + ("" if body.endswith("{") else ", ") + fields + "}"


class _LineWriter:
    """Writes whole lines to a file descriptor under a lock, so two writer threads never interleave."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        data = memoryview(text.encode(errors="replace"))
        with self._lock:
            while data:
                data = data[os.write(self._fd, data) :]
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


class StderrRouter:
    """Takes over fd 2, so that every line on the process's stderr is a JSON object.

    gRPC's C core, child processes and Python's last-resort printing write to fd 2 directly; they
    now write into a pipe whose reader thread passes each line through `foreign_line`. `stream`
    writes to the real stderr, for the log handler. `close()` gives fd 2 back.
    """

    def __init__(self) -> None:
        sys.stderr.flush()
        self._real_stderr = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.stream = _LineWriter(self._real_stderr)
        self._reader = self.relay(read_end, {}, name="stderr-router")

    def relay(self, read_end: int, fields: Mapping[str, object], *, name: str) -> threading.Thread:
        """Copy the lines read from `read_end` (until EOF) to the real stderr as JSON, each with `fields`.

        A worker's stderr comes in this way: a pipe per writer, so that two processes' long lines
        never interleave, and its pid and worker number are added here, whatever wrote the line.
        """
        extra = json.dumps(dict(fields), default=str)[1:-1]
        reader = threading.Thread(target=self._pump, args=(read_end, extra), name=name, daemon=True)
        reader.start()
        return reader

    def _pump(self, read_end: int, extra: str) -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = foreign_line(raw)
                if line is None:
                    continue
                if extra:
                    if not line.rstrip().endswith("}"):  # a line cut short (its writer killed mid-line)
                        line = json_line("ERROR", "stderr", line)
                    line = with_fields(line, extra)
                # Keep draining even when the real stderr is gone: a full pipe would block every
                # writer of fd 2, gRPC's core threads included.
                with contextlib.suppress(OSError):
                    self.stream.write(line + "\n")

    def close(self, timeout: float = 2.0) -> None:
        """Restore fd 2 and let the reader drain what was written before (children may keep it open)."""
        sys.stderr.flush()
        os.dup2(self._real_stderr, 2)
        self._reader.join(timeout)


class LogWriter(logging.handlers.QueueListener):
    """The log thread; stopping it flushes the log and gives fd 2 back."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord], router: StderrRouter) -> None:
        handler = logging.StreamHandler(router.stream)
        handler.setFormatter(JsonFormatter())
        super().__init__(records, handler)
        self._router = router

    def relay(self, read_end: int, fields: Mapping[str, object]) -> threading.Thread:
        """Pass another process's stderr lines (read from `read_end`) on as JSON with `fields` added."""
        return self._router.relay(read_end, fields, name=f"stderr-relay-{read_end}")

    def stop(self) -> None:
        super().stop()
        self._router.close()


def configure_logging(level: str) -> LogWriter:
    """JSON lines on stderr for the whole process; stop the returned listener at exit to flush.

    A thread writes them, so a slow log sink never blocks the event loop. fd 2 is routed through
    StderrRouter until then, so gRPC core's own lines (a port conflict, say) are JSON too.
    """
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = LogWriter(records, StderrRouter())
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level)
    listener.start()
    return listener


class Metrics:
    """The server's Prometheus metrics, in a registry of its own.

    In a worker (PROMETHEUS_MULTIPROC_DIR set by its parent before it started) prometheus-client
    keeps the values in files of that folder instead, and the parent serves their sum
    (`worker_metrics`); the gauges' multiprocess modes say how workers' values combine.
    """

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
            "sendinchat_open_streams",
            "Streaming RPCs in progress",
            ["method"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.database_up = Gauge(
            "sendinchat_database_up",
            "1 while PostgreSQL answers the health probe",
            registry=self.registry,
            multiprocess_mode="livemin",  # 1 while every worker reaches it
        )


METRICS_CONNECTIONS = 16  # at once; more are closed at once (a scraper needs one)
METRICS_CONNECTION_SECONDS = 5.0  # every connection is closed after this long (a scrape takes milliseconds)


class _QuietHandler(WSGIRequestHandler):
    def handle(self) -> None:
        # One deadline for the whole connection, idle or trickling a byte every few seconds.
        deadline = threading.Timer(METRICS_CONNECTION_SECONDS, self._cut)
        deadline.start()
        try:
            super().handle()
        finally:
            deadline.cancel()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: object) -> None:  # the base class's name
        pass


class _BoundedServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, as prometheus-client's, but at most METRICS_CONNECTIONS of them.

    It runs in the gRPC server's process: unbounded, idle connections could take every file
    descriptor and thread the process has.
    """

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback; a client that left or was cut off is no error.
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            log.error("/metrics failed a request from %s (%r)", client_address[0], error)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_metrics(registry: CollectorRegistry, address: str) -> WSGIServer:
    """Serve `registry` as /metrics over HTTP on address (HOST:PORT, port 0 picks one), in a thread."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class: type[_BoundedServer] = type("MetricsServer", (_BoundedServer,), {"address_family": family})
    server: WSGIServer = make_server(
        host, int(port), make_wsgi_app(registry), server_class, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def worker_metrics(directory: str) -> CollectorRegistry:
    """A registry that sums the metrics every worker wrote to `directory` (its PROMETHEUS_MULTIPROC_DIR)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # unannotated upstream
    return registry


def supervision_metrics(
    registry: CollectorRegistry, *, serving: Callable[[], int], restarts: Callable[[], int]
) -> None:
    """The parent's own view of its workers, read at each scrape (a slot that keeps failing shows)."""
    Gauge("sendinchat_workers_serving", "Worker processes serving now", registry=registry).set_function(
        serving
    )
    registry.register(_Supervision(restarts))


class _Supervision(Collector):
    def __init__(self, restarts: Callable[[], int]) -> None:
        self._restarts = restarts

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "sendinchat_worker_restarts",
            "Workers started to replace one that exited or could not start",
            value=self._restarts(),
        )


def forget_worker(pid: int, directory: str) -> None:
    """Drop a worker that exited from the live gauges; its counters and histograms keep counting."""
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # unannotated upstream


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
        """Log and count one RPC; `reason` is the ErrorInfo reason of a refusal. Never pass request bodies."""
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
