"""What a serving process sets up around its gRPC server: the stop signals and /metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry

from server.config import Config, ConfigError
from server.observability import serve_metrics

log = logging.getLogger(__name__)


# SIGHUP too: what a closed terminal or ssh session sends, which must drain like a deploy's SIGTERM.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_event() -> asyncio.Event:
    """An event set by a stop signal (SIGTERM, SIGINT, SIGHUP), from now on."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    return stop


async def stoppable_start(main: Coroutine[Any, Any, None]) -> None:
    """Run `main`, which calls stop_event() once it serves; a stop signal before that cancels it.

    A start can wait a minute for the database; cancelled, it unwinds what it started (the
    embedded PostgreSQL) instead of leaving it behind as the signal's default action would.
    """
    task = asyncio.current_task()
    assert task is not None
    stopped_early = False

    def cancel() -> None:
        nonlocal stopped_early
        stopped_early = True
        log.warning("stop signal while starting; stopping")
        task.cancel()

    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, cancel)
    try:
        await main
    except asyncio.CancelledError:
        if not stopped_early:
            raise
        task.uncancel()
        log.info("stopped")


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
