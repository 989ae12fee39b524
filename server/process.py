"""What a serving process sets up around its gRPC server: the stop signals and /metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry

from server.config import Config, ConfigError
from server.observability import serve_metrics

log = logging.getLogger(__name__)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def start_metrics(config: Config, registry: CollectorRegistry) -> WSGIServer:
    """Serve `registry` on SENDINCHAT_METRICS_ADDRESS; a port that cannot be had is a ConfigError."""
    try:
        server = serve_metrics(registry, config.metrics_address)
    except OSError as exc:
        raise ConfigError(
            f"SENDINCHAT_METRICS_ADDRESS: cannot listen on {config.metrics_address}: {exc}"
        ) from None
    host = config.metrics_address.rpartition(":")[0]
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
