"""The embedded PostgreSQL: shared by the servers of one data folder, stopped by the last to leave."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest

from tests.harness import Postgres
from tests.ops.process import ServerProcesses, pid_alive, postmaster_pid, wait_gone


class TestEmbeddedPostgres:
    async def test_next_server_takes_it_over_and_stops_it_when_its_starter_was_killed(
        self, processes: ServerProcesses, embedded_data_dir: Path
    ) -> None:
        first = await processes.start_embedded(embedded_data_dir)
        await first.wait_serving()
        postmaster = postmaster_pid(embedded_data_dir)
        assert postmaster is not None
        first.process.kill()
        await first.wait()
        assert postmaster_pid(embedded_data_dir) == postmaster, "SIGKILL leaves PostgreSQL running"
        second = await processes.start_embedded(embedded_data_dir)
        await second.wait_serving()
        assert postmaster_pid(embedded_data_dir) == postmaster, "the next server reuses it"
        second.terminate()
        assert await second.wait() == 0
        await wait_gone(postmaster)
        assert not (embedded_data_dir / "pgdata" / "postmaster.pid").exists()
        assert any(
            "taking over" in str(record.get("message")) and str(first.process.pid) in str(record["message"])
            for record in second.records()
        )

    async def test_sighup_stops_the_server_and_its_postgresql_as_sigterm_does(
        self, processes: ServerProcesses, embedded_data_dir: Path
    ) -> None:
        server = await processes.start_embedded(embedded_data_dir)
        await server.wait_serving()
        postmaster = postmaster_pid(embedded_data_dir)
        assert postmaster is not None
        server.process.send_signal(signal.SIGHUP)  # a closed terminal
        assert await server.wait() == 0
        await wait_gone(postmaster)
        assert any(record.get("message") == "stopped" for record in server.records())

    async def test_a_lock_file_naming_a_reused_pid_is_not_taken_for_a_running_server(
        self, processes: ServerProcesses, embedded_data_dir: Path
    ) -> None:
        first = await processes.start_embedded(embedded_data_dir)
        await first.wait_serving()
        lock_file = embedded_data_dir / "pgdata" / "postmaster.pid"
        lines = lock_file.read_text().split("\n")
        first.terminate()
        assert await first.wait() == 0
        # As after a restart: a living process, not PostgreSQL (one a wrong stop would not hurt).
        bystander = await asyncio.create_subprocess_exec("sleep", "60")
        try:
            lines[0] = str(bystander.pid)
            lock_file.write_text("\n".join(lines))
            second = await processes.start_embedded(embedded_data_dir)
            await second.wait_serving()
            assert any("stale lock file" in str(record.get("message")) for record in second.records())
            second.terminate()
            assert await second.wait() == 0
            assert bystander.returncode is None
        finally:
            bystander.kill()
            await bystander.wait()

    async def test_servers_creating_the_database_at_once_all_get_it(self, postgres: Postgres) -> None:
        if postgres.embedded is None:
            pytest.skip("SENDINCHAT_TEST_DATABASE_URL names another server")
        name = f"race_{uuid.uuid4().hex[:8]}"
        urls = await asyncio.gather(*(postgres.embedded.ensure_database(name) for _ in range(8)))
        assert len(set(urls)) == 1
        await postgres.drop_database(urls[0])

    async def test_keeps_it_running_when_a_living_server_still_uses_it(
        self, processes: ServerProcesses, embedded_data_dir: Path
    ) -> None:
        first = await processes.start_embedded(embedded_data_dir)
        await first.wait_serving()
        second = await processes.start_embedded(embedded_data_dir)
        await second.wait_serving()
        postmaster = postmaster_pid(embedded_data_dir)
        assert postmaster is not None
        second.terminate()
        assert await second.wait() == 0
        assert pid_alive(postmaster), "the first server still uses it"
        await first.wait_serving()
        first.terminate()
        assert await first.wait() == 0
        await wait_gone(postmaster)
