"""The README's commands, exactly as written: CI runs the quick start's, and these tests run the rest."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

from tests.contract import readme, tools
from tests.harness import REPO, TEST_JWT_SECRET, Postgres
from tests.ops.process import ServerProcesses, postmaster_pid, server_env

CI = REPO / ".ci" / "run"
README_ADDRESS = "A=127.0.0.1:50051\n"


def _ci_commands() -> list[str]:
    """.ci/run's lines that do something (no blank lines, comments or step titles)."""
    lines = [line.strip() for line in CI.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _venv_in(directory: Path) -> None:
    """Make `directory/.venv` this interpreter's venv, so `.venv/bin/...` means the tools under test."""
    (directory / ".venv").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)


async def _shell(script: str, *, cwd: Path = REPO, env: Mapping[str, str] | None = None) -> tools.Result:
    """Run `script` as a fresh shell would (no venv activated), stopping at the first failing command."""
    bash = shutil.which("bash")
    assert bash is not None
    return await tools.run(bash, "-e", "-o", "pipefail", "-c", script, cwd=cwd, env=server_env(**(env or {})))


def _documents(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects grpcurl printed one after another."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    index = 0
    while (index := _skip_space(stdout, index)) < len(stdout):
        document, index = decoder.raw_decode(stdout, index)
        found.append(document)
    return found


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


class TestQuickStart:
    def test_ci_runs_the_readme_test_command_verbatim_as_its_last_command_when_read(self):
        assert _ci_commands()[-1] == readme.quick_start().tests

    def test_ci_reads_the_server_command_from_the_readme_when_it_checks_it(self):
        text = CI.read_text()
        assert readme.quick_start().server not in text, ".ci/run keeps a copy that can drift"
        assert ".venv/bin/python -m tests.contract.readme server-command" in text
        assert ".venv/bin/python -m server healthcheck" in text

    def test_ci_calls_tools_by_their_venv_path_when_it_never_touches_path(self):
        text = CI.read_text()
        assert not re.search(r"\bPATH\b", text), (
            ".ci/run must run the README's commands as a fresh shell does"
        )
        for tool in ("buf", "ruff", "mypy", "hadolint"):
            for line in _ci_commands():
                if re.match(rf"{tool}\b", line):
                    raise AssertionError(f".ci/run calls {tool} without its .venv/bin/ path: {line}")

    def test_uses_no_activated_venv_when_the_commands_call_project_tools(self):
        commands = readme.quick_start()
        for command in (commands.server, commands.tests):
            steps = [step.strip() for step in command.split("&&")]
            assert steps[0] == "python3 -m venv .venv"
            assert all(step.startswith(".venv/bin/") for step in steps[1:]), command

    def test_every_written_bench_command_calls_the_venv_interpreter_when_it_runs_a_bench(self):
        # A fresh shell has no `python`, or one without the project's packages.
        documents = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "bench").glob("*.py"))]
        written = [
            line
            for document in documents
            for line in document.read_text().splitlines()
            if "python -m bench." in line and not line.startswith("#")
        ]
        assert written
        bare = [line for line in written if not re.search(r"\.venv/bin/python -m bench\.", line)]
        assert not bare, "\n".join(bare)


class TestGrpcurlWalkthrough:
    async def test_runs_as_written_when_the_server_was_started_as_the_readme_says(
        self, processes: ServerProcesses, embedded_data_dir: Path
    ) -> None:
        start = readme.inline_command("Talking to it with grpcurl", ".venv/bin/python -m server")
        server = await processes.spawn(["bash", "-c", start], SENDINCHAT_DATA_DIR=str(embedded_data_dir))
        address = await server.wait_serving()
        block = readme.grpcurl_walkthrough()
        assert block.count(README_ADDRESS) == 1, "the walkthrough names the server once, in A="
        result = await _shell(block.replace(README_ADDRESS, f"A={address}\n"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "sendinchat.v1.LedgerService" in result.stdout.splitlines()
        assert "rpc CreateTransfer" in result.stdout
        documents = _documents(result.stdout[result.stdout.index("{") :])
        usernames = [doc["user"]["username"] for doc in documents if "user" in doc]
        assert usernames[:3] == ["alice", "bob", "alice"]  # Register, Register, GetMe
        [account] = [
            doc["account"] for doc in documents if "account" in doc and "balanceMinor" in doc["account"]
        ]
        assert account["balanceMinor"] == "9750"
        frames = documents[documents.index({"account": account}) + 1 :]  # the Connect stream's
        assert any("subscribed" in frame for frame in frames), frames
        [ack] = [frame["ack"] for frame in frames if "ack" in frame]
        assert (ack["clientMessageId"], ack["sequence"]) == ("m1", "1")
        server.terminate()
        assert await server.wait() == 0
        assert postmaster_pid(embedded_data_dir) is None


class TestAdminCommands:
    async def test_create_admin_and_migrate_work_as_written_when_pointed_at_a_database(
        self, postgres: Postgres
    ) -> None:
        database = await postgres.create_database()
        env = {
            "DATABASE_URL": database,
            "SENDINCHAT_JWT_SECRET": TEST_JWT_SECRET,
            "SENDINCHAT_BCRYPT_ROUNDS": "4",
        }
        create_admin = readme.inline_command("Admins", ".venv/bin/python -m server create-admin")
        created = await _shell(create_admin, env={**env, "SENDINCHAT_ADMIN_PASSWORD": "root-password-1"})
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith("admin root (")
        migrate = readme.inline_command("Operations", ".venv/bin/python -m server migrate")
        migrated = await _shell(migrate, env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.strip() == "applied: nothing (up to date)"
        conn = await asyncpg.connect(database)
        try:
            assert await conn.fetchval("SELECT role FROM users WHERE username = 'root'") == "admin"
        finally:
            await conn.close()


class TestRegenerating:
    async def test_commands_work_as_written_when_run_in_a_copy_of_the_repo(self, tmp_path: Path) -> None:
        for part in ("protos", "clients/sendinchat/v1"):
            shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
        for part in ("buf.yaml", "clients/regenerate_stubs.py"):
            shutil.copy2(REPO / part, tmp_path / part)
        _venv_in(tmp_path)
        result = await _shell(readme.regenerate_commands(), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        for name in os.listdir(REPO / "clients" / "sendinchat" / "v1"):
            if name != "__pycache__":
                generated = tmp_path / "clients" / "sendinchat" / "v1" / name
                assert generated.read_bytes() == (REPO / "clients" / "sendinchat" / "v1" / name).read_bytes()
        for proto in (REPO / "protos").rglob("*.proto"):
            assert (tmp_path / proto.relative_to(REPO)).read_text() == proto.read_text(), (
                "buf format changed it"
            )
