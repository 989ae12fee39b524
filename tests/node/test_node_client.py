"""A Node.js client (@grpc/grpc-js loading protos/ at run time) against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from sendinchat.v1 import users_pb2
from tests import harness
from tests.helpers import PASSWORD, Account, random_name, signed_up, signed_up_admin
from tests.ledger.support import balance

NODE_DIR = harness.REPO / "tests" / "node"
README_SNIPPET = NODE_DIR / "readme-snippet.mjs"  # git-ignored; beside node_modules so imports resolve
NPM_CI_TIMEOUT_SECONDS = 180.0
SCENARIO_TIMEOUT_SECONDS = 60.0

# npm ci (once per machine, or after the lock file changes) and the scenario share one test's budget.
pytestmark = pytest.mark.timeout(NPM_CI_TIMEOUT_SECONDS + SCENARIO_TIMEOUT_SECONDS + 30)


@dataclass(frozen=True)
class Run:
    """The scenario's output, one JSON object per step, and the server it ran against."""

    server: harness.TestServer
    node: str
    steps: dict[str, list[dict[str, Any]]]
    alice: str
    bob: str

    def one(self, step: str) -> dict[str, Any]:
        """The only line of a step."""
        (line,) = self.steps[step]
        return line


async def _run(
    program: str, *args: str, seconds: float, env: dict[str, str] | None = None, cwd: Path = NODE_DIR
) -> str:
    """Run a program without blocking the loop the in-process server serves on; fail unless it exits 0."""
    process = await asyncio.create_subprocess_exec(
        program,
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{Path(program).name} {' '.join(args)} took over {seconds:.0f} s")
    if process.returncode != 0:
        pytest.fail(
            f"{Path(program).name} {' '.join(args)} exited {process.returncode}\n"
            f"stdout:\n{stdout.decode()}\nstderr:\n{stderr.decode()}"
        )
    return stdout.decode()


async def _install_packages() -> None:
    """Install the packages with `npm ci` from the lock file, unless node_modules already matches it."""
    installed = NODE_DIR / "node_modules" / ".package-lock.json"  # written last by npm ci
    lock = NODE_DIR / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("node is installed but npm is not; npm installs the Node client's packages")
    await _run(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error", seconds=NPM_CI_TIMEOUT_SECONDS)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def run(postgres: harness.Postgres) -> AsyncIterator[Run]:
    """The Node scenario, run once against a real server with a fresh admin."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js client test needs Node 20+ and npm on PATH")
    await _install_packages()
    async for servers in harness.server_factory_for(postgres):
        server = await servers.start()
        admin = await signed_up_admin(server)
        alice, bob = random_name("alice"), random_name("bob")
        env = {
            **os.environ,
            "SENDINCHAT_ADDRESS": server.address,
            "SENDINCHAT_ADMIN_TOKEN": admin.tokens.access_token,
            "SENDINCHAT_ALICE": alice,
            "SENDINCHAT_BOB": bob,
            "SENDINCHAT_PASSWORD": PASSWORD,
        }
        stdout = await _run(node, "scenario.mjs", seconds=SCENARIO_TIMEOUT_SECONDS, env=env)
        steps: dict[str, list[dict[str, Any]]] = {}
        for line in stdout.splitlines():
            record = json.loads(line)
            steps.setdefault(record.pop("step"), []).append(record)
        assert "done" in steps, stdout
        yield Run(server, node, steps, alice, bob)


async def _logged_in(server: harness.TestServer, username: str) -> Account:
    reply = await server.stubs.users.Login(users_pb2.LoginRequest(username=username, password=PASSWORD))
    return Account(reply.user, reply.tokens)


class TestRegisterAndLogin:
    def test_both_users_exist_with_bearer_tokens_when_registered_from_node(self, run):
        assert [line["username"] for line in run.steps["register"]] == [run.alice, run.bob]
        assert all(line["role"] == "ROLE_USER" and line["user_id"] for line in run.steps["register"])
        assert run.steps["login"] == [
            {"username": name, "token_type": "Bearer", "has_access_token": True}
            for name in (run.alice, run.bob)
        ]


class TestCreateTransfer:
    def test_deposit_and_transfer_post_with_int64_amounts_as_strings_when_sent_from_node(self, run):
        alice_id, bob_id = (line["user_id"] for line in run.steps["register"])
        deposit = run.one("deposit")
        assert (deposit["kind"], deposit["state"]) == ("TRANSFER_KIND_DEPOSIT", "TRANSFER_STATE_POSTED")
        assert (deposit["from_user_id"], deposit["to_user_id"], deposit["amount_minor"]) == (
            "",
            alice_id,
            "10000",
        )
        transfer = run.one("transfer")
        assert (transfer["kind"], transfer["state"]) == ("TRANSFER_KIND_TRANSFER", "TRANSFER_STATE_POSTED")
        assert (transfer["from_user_id"], transfer["to_user_id"]) == (alice_id, bob_id)
        assert (transfer["currency"], transfer["amount_minor"]) == ("USD", "250")

    def test_node_reads_insufficient_funds_error_info_from_trailers_when_refused(self, run):
        refused = run.one("refused")
        assert refused["refused"] is True, refused
        assert (refused["code"], refused["code_name"]) == (9, "FAILED_PRECONDITION")
        info = refused["error_info"]
        assert info is not None, "no ErrorInfo decoded from grpc-status-details-bin"
        assert (info["type"], info["reason"], info["domain"]) == (
            "google.rpc.ErrorInfo",
            "INSUFFICIENT_FUNDS",
            "sendinchat.v1",
        )

    async def test_balances_read_from_python_match_when_node_moved_money(self, run):
        alice = await _logged_in(run.server, run.alice)
        bob = await _logged_in(run.server, run.bob)
        assert await balance(run.server.stubs, alice) == 10_000 - 250
        assert await balance(run.server.stubs, bob) == 250


class TestWatchTransfers:
    def test_recipient_receives_the_transfer_with_a_cursor_when_watching_from_node(self, run):
        assert run.one("watch_open") == {}
        watched = run.one("watched")
        assert watched["transfer"] == run.one("transfer")
        assert watched["has_cursor"] is True


class TestConnect:
    def test_subscriber_receives_the_other_users_message_with_its_sequence_when_both_connect_from_node(
        self, run
    ):
        alice_id, bob_id = (line["user_id"] for line in run.steps["register"])
        room = run.one("room")
        assert (room["kind"], room["member_user_ids"]) == ("ROOM_KIND_DIRECT", sorted([alice_id, bob_id]))
        connect = run.one("connect")
        assert connect["subscribed"]["room_id"] == room["room_id"]
        ack, received = connect["ack"], connect["received"]
        assert ack["room_id"] == room["room_id"] and ack["client_message_id"], ack
        assert received == {
            "room_id": room["room_id"],
            "sequence": ack["sequence"],
            "sender_user_id": bob_id,
            "client_message_id": ack["client_message_id"],
            "kind": "MESSAGE_KIND_TEXT",
            "text": "hello from node",
        }
        assert int(received["sequence"]) == int(connect["subscribed"]["last_sequence"]) + 1
        assert connect["stream_codes"] == ["OK", "OK"]


class TestReadmeSnippet:
    async def test_prints_the_error_info_reason_when_the_readme_snippet_transfers_without_funds(self, run):
        readme = (harness.REPO / "README.md").read_text()
        section = readme.split("## From Node.js", 1)[1]
        snippet = section.split("```js\n", 1)[1].split("```", 1)[0]
        assert "127.0.0.1:50051" in snippet
        await signed_up(run.server.stubs, "bob")
        payer = await signed_up(run.server.stubs)
        program = "const accessToken = process.env.ACCESS_TOKEN;\n" + snippet.replace(
            "127.0.0.1:50051", run.server.address
        )
        README_SNIPPET.write_text(program)
        try:
            env = {**os.environ, "ACCESS_TOKEN": payer.tokens.access_token}
            stdout = await _run(
                run.node, str(README_SNIPPET), seconds=SCENARIO_TIMEOUT_SECONDS, env=env, cwd=harness.REPO
            )
        finally:
            README_SNIPPET.unlink()
        assert stdout == "FAILED_PRECONDITION INSUFFICIENT_FUNDS\n"
