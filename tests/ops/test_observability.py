"""One JSON log line per RPC without secrets, and Prometheus metrics on their own port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from pathlib import Path

import grpc
import pytest

from sendinchat.v1 import users_pb2, users_pb2_grpc
from server.observability import METRICS_CONNECTION_SECONDS, METRICS_CONNECTIONS, foreign_line
from tests.helpers import bearer, random_name
from tests.ops.process import ISO_MILLIS_UTC, ServerProcesses, postmaster_pid

DISTINCTIVE_PASSWORD = "Zebra-Quartz-7731-Mango"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


class TestRpcLog:
    async def test_writes_one_json_line_per_rpc_without_secrets_when_users_sign_in(self, servers, processes):
        process = await processes.start(await servers.database())
        address = await process.wait_serving()
        name = random_name()
        async with grpc.aio.insecure_channel(address) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            await users.Register(users_pb2.RegisterRequest(username=name, password=DISTINCTIVE_PASSWORD))
            login = await users.Login(users_pb2.LoginRequest(username=name, password=DISTINCTIVE_PASSWORD))
            await users.GetMe(users_pb2.GetMeRequest(), metadata=bearer(login.tokens.access_token))
            await users.RefreshToken(users_pb2.RefreshTokenRequest(refresh_token=login.tokens.refresh_token))
        process.terminate()
        assert await process.wait() == 0
        rpc_lines = [r for r in process.records() if r.get("logger") == "sendinchat.rpc"]
        by_method = {r["method"].rsplit("/", 1)[1]: r for r in rpc_lines if "UserService" in r["method"]}
        assert sorted(by_method) == ["GetMe", "Login", "RefreshToken", "Register"]
        assert len([r for r in rpc_lines if "UserService" in r["method"]]) == 4
        for record in by_method.values():
            assert record["code"] == "OK"
            assert isinstance(record["duration_ms"], int | float) and record["duration_ms"] >= 0
            assert "127.0.0.1" in record["peer"]
        assert by_method["GetMe"]["user_id"] == login.user.id
        for secret in (DISTINCTIVE_PASSWORD, login.tokens.access_token, login.tokens.refresh_token):
            assert secret not in process.stderr
        for token_part in login.tokens.access_token.split("."):
            assert token_part not in process.stderr

    async def test_logs_the_error_code_when_an_rpc_fails(self, servers, processes):
        process = await processes.start(await servers.database())
        address = await process.wait_serving()
        async with grpc.aio.insecure_channel(address) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            try:
                await users.Login(
                    users_pb2.LoginRequest(username=random_name(), password=DISTINCTIVE_PASSWORD)
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        process.terminate()
        assert await process.wait() == 0
        [line] = [r for r in process.records() if str(r.get("method", "")).endswith("/Login")]
        assert line["code"] == "UNAUTHENTICATED"
        assert DISTINCTIVE_PASSWORD not in process.stderr


class TestMetrics:
    async def test_exposes_rpc_counters_when_metrics_address_is_set(self, servers, processes):
        process = await processes.start(await servers.database(), SENDINCHAT_METRICS_ADDRESS="127.0.0.1:0")
        address = await process.wait_serving()
        port = await process.metrics_port()
        async with grpc.aio.insecure_channel(address) as channel:
            await users_pb2_grpc.UserServiceStub(channel).Register(
                users_pb2.RegisterRequest(username=random_name(), password=DISTINCTIVE_PASSWORD)
            )
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert "sendinchat_rpcs_total" in text
        assert 'method="/sendinchat.v1.UserService/Register"' in text
        assert "sendinchat_database_up 1.0" in text


class TestMetricsEndpoint:
    async def test_idle_connections_cannot_pile_up_and_scrapes_work_once_they_are_gone(
        self, servers, processes
    ):
        process = await processes.start(await servers.database(), SENDINCHAT_METRICS_ADDRESS="127.0.0.1:0")
        await process.wait_serving()
        port = await process.metrics_port()
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(METRICS_CONNECTIONS)]
        try:
            one_more, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            async with asyncio.timeout(METRICS_CONNECTION_SECONDS / 2):  # long before any deadline
                assert await one_more.read() == b"", "past the cap: closed at once, unanswered"
            writer.close()
            async with asyncio.timeout(METRICS_CONNECTION_SECONDS * 4):
                closed = await asyncio.gather(*(reader.read() for reader, _ in idle))
            assert closed == [b""] * len(idle)  # once they were open too long
        finally:
            for _, idle_writer in idle:
                idle_writer.close()
        assert "sendinchat_rpcs_total" in await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")

    async def test_a_client_trickling_bytes_is_cut_off_too(self, servers, processes):
        process = await processes.start(await servers.database(), SENDINCHAT_METRICS_ADDRESS="127.0.0.1:0")
        await process.wait_serving()
        port = await process.metrics_port()

        async def trickle() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"x" * 100:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(METRICS_CONNECTION_SECONDS / 3):
                            return await reader.read()  # closed by the server
                return b"still open"
            except ConnectionError:
                return b""
            finally:
                writer.close()

        async with asyncio.timeout(METRICS_CONNECTION_SECONDS * 4):
            assert await asyncio.gather(*(trickle() for _ in range(METRICS_CONNECTIONS))) == [b""] * (
                METRICS_CONNECTIONS
            )
        assert "sendinchat_rpcs_total" in await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")


class TestStderr:
    async def test_every_line_is_json_when_a_server_serves_refuses_and_another_meets_its_port(
        self, processes: ServerProcesses, embedded_data_dir: Path
    ) -> None:
        first = await processes.start_embedded(embedded_data_dir)
        address = await first.wait_serving()
        name = random_name()
        async with grpc.aio.insecure_channel(address) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            await users.Register(users_pb2.RegisterRequest(username=name, password=DISTINCTIVE_PASSWORD))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await users.Login(
                    users_pb2.LoginRequest(username=name, password="not-" + DISTINCTIVE_PASSWORD)
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        conflict = await processes.start_embedded(embedded_data_dir, SENDINCHAT_ADDRESS=address)
        assert await conflict.wait() == 2
        first.terminate()
        assert await first.wait() == 0
        assert postmaster_pid(embedded_data_dir) is None

        conflict_records = conflict.json_lines()
        assert any(
            record["logger"] == "grpc"
            and record["level"] == "ERROR"
            and "add_port" in str(record.get("source"))
            for record in conflict_records
        ), conflict.stderr
        assert "SENDINCHAT_ADDRESS" in str(conflict_records[-1]["message"])
        records = first.json_lines()
        [login] = [record for record in records if str(record.get("method", "")).endswith("/Login")]
        assert (login["code"], login["reason"]) == ("UNAUTHENTICATED", "WRONG_CREDENTIALS")
        [register] = [record for record in records if str(record.get("method", "")).endswith("/Register")]
        assert register["code"] == "OK" and "reason" not in register
        assert DISTINCTIVE_PASSWORD not in first.stderr

    def test_wraps_grpc_core_lines_as_json_with_their_severity_when_they_reach_fd_2(self) -> None:
        fork = (
            b"I1202 00:31:27.501982   11448 fork_posix.cc:71] Other threads are currently calling into gRPC\n"
        )
        record = json.loads(foreign_line(fork) or "")
        assert (record["level"], record["logger"], record["source"]) == ("INFO", "grpc", "fork_posix.cc:71")
        assert record["message"] == "Other threads are currently calling into gRPC"
        assert ISO_MILLIS_UTC.fullmatch(record["time"])
        port = b"E1202 00:31:27.439939   11571 add_port.cc:83] Failed to add port to server: in use\n"
        assert json.loads(foreign_line(port) or "")["level"] == "ERROR"

    def test_passes_json_and_wraps_other_lines_when_they_reach_fd_2(self) -> None:
        own = json.dumps({"time": "2026-12-02T00:20:40.123Z", "level": "INFO", "logger": "x", "message": "m"})
        assert foreign_line(own.encode() + b"\n") == own
        notice = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        assert json.loads(foreign_line(notice) or "")["level"] == "WARNING"
        traceback_line = json.loads(foreign_line(b'  File "x.py", line 1, in <module>\n') or "")
        assert (traceback_line["level"], traceback_line["logger"]) == ("ERROR", "stderr")
        assert traceback_line["message"] == '  File "x.py", line 1, in <module>'
        assert foreign_line(b"\n") is None
        assert json.loads(foreign_line(b"{not json\n") or "")["message"] == "{not json"
