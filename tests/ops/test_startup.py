"""A server started while PostgreSQL is unreachable waits for it (bounded), then serves or says why not."""

from __future__ import annotations

import re
import signal

import pytest

from tests.ops.dbproxy import DatabaseProxy

_RETRYING = re.compile(r"cannot reach the database \(attempt 2")


class TestStartWhileTheDatabaseIsDown:
    async def test_serves_once_the_database_answers_when_started_before_it(
        self, postgres, servers, processes
    ):
        proxy = DatabaseProxy(postgres.admin_url)
        await proxy.start()
        url = proxy.url_for(await servers.database())
        await proxy.cut()  # the port is known, nothing listens on it
        try:
            replica = await processes.start(url, SENDINCHAT_DB_CONNECT_TIMEOUT_SECONDS="60")
            await replica.wait_for_log(_RETRYING)
            await proxy.start()
            await replica.wait_serving()
        finally:
            await proxy.close()
        replica.terminate()
        assert await replica.wait() == 0

    async def test_exits_with_one_clear_line_when_the_database_stays_away(self, postgres, servers, processes):
        proxy = DatabaseProxy(postgres.admin_url)
        await proxy.start()
        url = proxy.url_for(await servers.database())
        await proxy.cut()
        replica = await processes.start(url, SENDINCHAT_DB_CONNECT_TIMEOUT_SECONDS="1")
        assert await replica.wait() == 1
        attempts = [
            r for r in replica.records() if "cannot reach the database (attempt" in str(r.get("message"))
        ]
        assert attempts, replica.stderr  # a log line per attempt
        assert "cannot reach the database after" in replica.lines[-1], replica.stderr

    @pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
    async def test_a_stop_signal_while_it_waits_ends_it_at_once_and_cleanly(
        self, postgres, servers, processes, stop
    ):
        proxy = DatabaseProxy(postgres.admin_url)
        await proxy.start()
        url = proxy.url_for(await servers.database())
        await proxy.cut()
        replica = await processes.start(url, SENDINCHAT_DB_CONNECT_TIMEOUT_SECONDS="60")
        await replica.wait_for_log(_RETRYING)
        replica.process.send_signal(stop)
        assert await replica.wait(seconds=10) == 0
        assert "Traceback" not in replica.stderr
        assert "stop signal while starting" in replica.stderr
