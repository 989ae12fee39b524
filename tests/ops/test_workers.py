"""SENDINCHAT_WORKERS: N processes on one port, one /metrics, signals and the embedded database as one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from sendinchat.v1 import users_pb2, users_pb2_grpc
from server.config import Config, ConfigError, machine_cores
from server.observability import with_fields
from server.ports import reserve_address
from tests.harness import ServerFactory
from tests.helpers import PASSWORD, random_name
from tests.ops.dbproxy import DatabaseProxy
from tests.ops.process import (
    ServerProcess,
    ServerProcesses,
    pid_alive,
    postmaster_pid,
    run_server_command,
    server_env,
    wait_gone,
)

ALL_SERVING = re.compile(r"serving gRPC on \S+ \(port (\d+)\) with 2 workers \(pids (\d+) (\d+)\)")
CONNECTIONS = 24  # all on one of two workers by chance: 2 in 2**24
REGISTER = "/sendinchat.v1.UserService/Register"


async def _start(
    processes: ServerProcesses, database_url: str, **env: str
) -> tuple[ServerProcess, str, list[int]]:
    """A parent with two workers: the process, the address they share, and the pids of workers 1 and 2."""
    process = await processes.start(database_url, SENDINCHAT_WORKERS="2", **env)
    serving = await process.wait_for_log(ALL_SERVING)
    return process, f"127.0.0.1:{serving.group(1)}", [int(serving.group(2)), int(serving.group(3))]


def _metrics_folders(parent_pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"sendinchat-metrics-{parent_pid}-*"))


async def _check_health_over_new_connections(address: str, count: int) -> None:
    for _ in range(count):
        # A local subchannel pool: a new TCP connection per channel, as separate clients would make.
        async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            health: Any = health_pb2_grpc.HealthStub(ch)  # the typeshed stub declares no methods
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _wait_for_records(process: ServerProcess, method: str, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(10):
        while True:
            found = [record for record in process.records() if record.get("method") == method]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class TestWorkers:
    async def test_serve_one_port_and_one_metrics_endpoint_and_stop_with_the_database_when_two_run(
        self, processes: ServerProcesses, embedded_data_dir: Path
    ) -> None:
        process = await processes.start_embedded(
            embedded_data_dir, SENDINCHAT_WORKERS="2", SENDINCHAT_METRICS_ADDRESS="127.0.0.1:0"
        )
        port = (await process.wait_for_log(ALL_SERVING)).group(1)
        metrics_port = await process.metrics_port()
        postmaster = postmaster_pid(embedded_data_dir)
        assert postmaster is not None
        for _ in range(CONNECTIONS):
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                health: Any = health_pb2_grpc.HealthStub(channel)  # the typeshed stub declares no methods
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                await users_pb2_grpc.UserServiceStub(channel).Register(
                    users_pb2.RegisterRequest(username=random_name(), password=PASSWORD), timeout=10
                )

        registered = await _wait_for_records(process, REGISTER, CONNECTIONS)
        assert {record["worker"] for record in registered} == {1, 2}, "connections land on both"
        samples = await asyncio.to_thread(_metrics, metrics_port)
        assert samples[("sendinchat_rpcs_total", (("code", "OK"), ("method", REGISTER)))] == CONNECTIONS
        assert samples[("sendinchat_database_up", ())] == 1.0
        assert samples[("sendinchat_workers_serving", ())] == 2.0
        assert samples[("sendinchat_worker_restarts_total", ())] == 0.0

        process.terminate()
        assert await process.wait() == 0
        await wait_gone(postmaster)
        records = process.json_lines()
        workers = [record for record in records if "worker" in record]
        assert {record["worker"] for record in workers} == {1, 2}
        assert all(isinstance(record["pid"], int) for record in workers)
        stopped = [int(record.get("worker", 0)) for record in records if record["message"] == "stopped"]
        assert sorted(stopped[:2]) == [1, 2] and stopped[2:] == [0], "the workers drain, then the parent"
        migrations = [record for record in records if "applied migration" in str(record["message"])]
        assert migrations and all("worker" not in record for record in migrations), "the parent migrates"

    async def test_replace_a_worker_that_is_killed_and_keep_serving(
        self, servers: ServerFactory, processes: ServerProcesses
    ) -> None:
        process, address, [victim, other] = await _start(processes, await servers.database())
        await _check_health_over_new_connections(address, 2)

        os.kill(victim, signal.SIGKILL)
        died = (
            rf"worker 1 \(pid {victim}\) was killed by SIGKILL \d+ s after it started; starting another in 1"
        )
        await process.wait_for_log(re.compile(died))
        replacement = int(
            (await process.wait_for_log(re.compile(r"worker 1 serves again \(pid (\d+)\)"))).group(1)
        )
        assert pid_alive(other), "the other worker is untouched"
        await _check_health_over_new_connections(address, 8)

        process.terminate()
        assert await process.wait() == 0
        assert not pid_alive(replacement) and not pid_alive(other)
        assert "Traceback" not in process.stderr

    async def test_a_replacement_that_cannot_start_while_the_database_is_away_is_tried_again(
        self, postgres: Any, servers: ServerFactory, processes: ServerProcesses
    ) -> None:
        proxy = DatabaseProxy(postgres.admin_url)
        await proxy.start()
        try:
            url = proxy.url_for(await servers.database())
            process, address, [victim, other] = await _start(
                processes,
                url,
                SENDINCHAT_DB_CONNECT_TIMEOUT_SECONDS="1",
                SENDINCHAT_METRICS_ADDRESS="127.0.0.1:0",
            )
            metrics_port = await process.metrics_port()
            await proxy.cut()
            os.kill(victim, signal.SIGKILL)
            await process.wait_for_log(
                re.compile(r"worker 1 \(pid \d+\) exited with code 1 .*before it served")
            )
            assert process.process.returncode is None and pid_alive(other), "the parent and worker 2 go on"
            samples = await asyncio.to_thread(_metrics, metrics_port)
            assert samples[("sendinchat_workers_serving", ())] == 1.0  # the failing slot shows
            assert samples[("sendinchat_worker_restarts_total", ())] >= 1.0
            await proxy.start()
            await process.wait_for_log(re.compile(r"worker 1 serves again"), seconds=60)
            await _check_health_over_new_connections(address, 8)
        finally:
            await proxy.close()
        process.terminate()
        assert await process.wait() == 0

    async def test_workers_stop_by_themselves_when_the_parent_is_killed(
        self, servers: ServerFactory, processes: ServerProcesses
    ) -> None:
        database_url = await servers.database()
        process, _address, pids = await _start(
            processes, database_url, SENDINCHAT_METRICS_ADDRESS="127.0.0.1:0"
        )
        left = _metrics_folders(process.process.pid)
        assert len(left) == 1, "the parent's metrics folder is named after it"
        process.process.kill()
        await process.wait()
        for pid in pids:
            await wait_gone(pid)
        assert left[0].exists(), "SIGKILL leaves it behind"
        after, _address, _pids = await _start(
            processes, database_url, SENDINCHAT_METRICS_ADDRESS="127.0.0.1:0"
        )
        assert not left[0].exists(), "the next parent removes it"
        after.terminate()
        assert await after.wait() == 0

    async def test_stop_every_worker_and_exit_one_when_a_worker_cannot_start(
        self, servers: ServerFactory, processes: ServerProcesses, tmp_path: Path
    ) -> None:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.write_text("not a certificate")
        key.write_text("not a key")
        process = await processes.start(
            await servers.database(),
            SENDINCHAT_WORKERS="2",
            SENDINCHAT_TLS_CERT_FILE=str(cert),
            SENDINCHAT_TLS_KEY_FILE=str(key),
        )
        assert await process.wait() == 1
        last = process.json_lines()[-1]
        assert "worker" not in last
        assert re.search(r"worker \d \(pid \d+\) exited with code 2 before it served", last["message"])

    async def test_refuse_a_port_in_use_like_one_process_does(
        self, servers: ServerFactory, processes: ServerProcesses
    ) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            address = f"127.0.0.1:{taken.getsockname()[1]}"
            process = await processes.start(
                await servers.database(), SENDINCHAT_WORKERS="2", SENDINCHAT_ADDRESS=address
            )
            assert await process.wait() == 2
        assert "SENDINCHAT_ADDRESS" in process.json_lines()[-1]["message"]
        assert "worker" not in process.stderr


class TestWorkersConfig:
    def test_defaults_to_one_process(self) -> None:
        assert Config.from_env({}).workers == 1

    def test_runs_one_worker_per_core_when_auto(self) -> None:
        assert Config.from_env({"SENDINCHAT_WORKERS": "auto"}).workers == machine_cores()
        assert Config.from_env({"SENDINCHAT_WORKERS": "AUTO"}).workers == machine_cores()

    @pytest.mark.parametrize("value", ["0", "x"])
    def test_server_exits_two_with_one_line_naming_the_variable_when_the_value_is_bad(
        self, value: str
    ) -> None:
        code, stderr = run_server_command(env=server_env(SENDINCHAT_WORKERS=value))
        assert code == 2
        [line] = stderr.strip().splitlines()
        assert "SENDINCHAT_WORKERS" in json.loads(line)["message"]

    @pytest.mark.parametrize("value", ["0", "x", "-1", "1.5", "257"])
    def test_refuses_the_value_naming_the_variable_when_it_is_not_a_count(self, value: str) -> None:
        with pytest.raises(ConfigError, match=r"^SENDINCHAT_WORKERS: .*auto"):
            Config.from_env({"SENDINCHAT_WORKERS": value})


def _listener(port: int, *, reuse_port: bool, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on host:port, set up as gRPC sets up its own (a wildcard `::` dual-stack)."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        if ":" in host:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        listener.bind((host, port))
        listener.listen()
    except OSError:
        listener.close()
        raise
    return listener


class TestReserveAddress:
    def test_lets_workers_share_the_port_and_keeps_other_servers_off_while_they_listen(self) -> None:
        with reserve_address("127.0.0.1:0") as (address, port):
            assert port > 0 and address == f"127.0.0.1:{port}"
            with _listener(port, reuse_port=True), _listener(port, reuse_port=True), pytest.raises(OSError):
                _listener(port, reuse_port=False).close()

    def test_refuses_naming_the_variable_when_another_server_listens_there(self) -> None:
        for reuse_port in (False, True):
            with _listener(0, reuse_port=reuse_port) as taken:
                address = f"127.0.0.1:{taken.getsockname()[1]}"
                with (
                    pytest.raises(ConfigError, match=r"^SENDINCHAT_ADDRESS: cannot listen"),
                    reserve_address(address),
                ):
                    pass

    def test_holds_a_wildcard_as_grpc_binds_it_when_the_address_is_0_0_0_0(self) -> None:
        with reserve_address("0.0.0.0:0") as (address, port):
            assert address == f"0.0.0.0:{port}"
            with _listener(port, reuse_port=True, host="::"), pytest.raises(OSError):
                _listener(port, reuse_port=False).close()


class TestWorkerLogLines:
    def test_adds_the_fields_to_a_json_line_without_reparsing_it(self) -> None:
        line = json.dumps({"time": "t", "level": "INFO", "logger": "x", "message": "m"})
        assert json.loads(with_fields(line + "  ", '"worker": 2, "pid": 7')) == {
            **json.loads(line),
            "worker": 2,
            "pid": 7,
        }
        assert json.loads(with_fields("{}", '"worker": 1')) == {"worker": 1}
