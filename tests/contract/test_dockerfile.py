"""The Dockerfile lints clean and its HEALTHCHECK command really speaks grpc.health.v1."""

from __future__ import annotations

import json
import os
import socket
import sys

from tests.contract import tools
from tests.harness import REPO

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def _healthcheck_command() -> list[str]:
    [arguments] = [args for name, args in _instructions() if name == "HEALTHCHECK"]
    command: list[str] = json.loads(arguments[arguments.index("CMD") + len("CMD") :])
    return command


async def _run_healthcheck(port: int, host: str = "0.0.0.0") -> tools.Result:
    command = _healthcheck_command()
    assert command[0] == "python"
    env = {**os.environ, "SENDINCHAT_ADDRESS": f"{host}:{port}"}
    return await tools.run(sys.executable, *command[1:], env=env)


class TestDockerfile:
    async def test_hadolint_passes_when_run_on_the_dockerfile(self):
        result = await tools.run("hadolint", str(DOCKERFILE))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_runs_the_server_as_non_root_on_port_50051_when_built(self):
        instructions = _instructions()
        froms = [args for name, args in instructions if name == "FROM"]
        assert len(froms) >= 2, "multi-stage build expected"
        assert len({args.split()[0] for args in froms}) == 1, "builder and runtime share one base"
        [user] = [args for name, args in instructions if name == "USER"]
        assert user.split(":")[0] not in ("root", "0")
        assert any(name == "EXPOSE" and "50051" in args.split() for name, args in instructions)
        assert ("CMD", '["python", "-m", "server"]') in instructions
        assert any(name == "VOLUME" and "/data" in args for name, args in instructions)

    async def test_healthcheck_exits_zero_when_the_server_is_serving(self, server):
        result = await _run_healthcheck(server.running.port)
        assert result.returncode == 0, result.stderr

    async def test_healthcheck_asks_the_configured_host_when_it_is_not_a_wildcard(self, servers):
        server = await servers.start(address="[::1]:0")
        result = await _run_healthcheck(server.running.port, host="[::1]")
        assert result.returncode == 0, result.stderr

    async def test_healthcheck_fails_when_the_server_is_not_serving(self, server):
        server.running.health.set_gate("test", False)
        await server.running.health.publish()
        result = await _run_healthcheck(server.running.port)
        assert result.returncode != 0

    async def test_healthcheck_fails_when_nothing_listens(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # closed again before the check runs
        result = await _run_healthcheck(port)
        assert result.returncode != 0
