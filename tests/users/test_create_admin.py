"""`python -m server create-admin` against a test database, then a login through the real server."""

from __future__ import annotations

import asyncio
import os
import sys

from sendinchat.v1 import users_pb2
from tests.harness import REPO, TEST_JWT_SECRET
from tests.helpers import PASSWORD, random_name, signed_up

ADMIN_PASSWORD = "admin-passphrase-for-tests"


async def _create_admin(database_url: str, username: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDINCHAT_")}
    env.update(
        DATABASE_URL=database_url,
        SENDINCHAT_JWT_SECRET=TEST_JWT_SECRET,
        SENDINCHAT_ADMIN_PASSWORD=ADMIN_PASSWORD,
        SENDINCHAT_BCRYPT_ROUNDS="4",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "create-admin",
        "--username",
        username,
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


class TestCreateAdmin:
    async def test_new_user_logs_in_as_admin_when_created_from_the_command_line(self, servers):
        database_url = await servers.database()
        name = random_name("admin")
        code, stdout, stderr = await _create_admin(database_url, name)
        assert code == 0, stderr
        assert name in stdout
        server = await servers.start(database_url)
        reply = await server.stubs.users.Login(users_pb2.LoginRequest(username=name, password=ADMIN_PASSWORD))
        assert reply.user.role == users_pb2.ROLE_ADMIN
        assert ADMIN_PASSWORD not in stdout + stderr

    async def test_existing_user_is_promoted_when_the_operator_gives_their_password(self, servers):
        server = await servers.start()
        account = await signed_up(server.stubs, password=ADMIN_PASSWORD)
        code, _stdout, stderr = await _create_admin(server.database_url, account.username)
        assert code == 0, stderr
        reply = await server.stubs.users.Login(
            users_pb2.LoginRequest(username=account.username, password=ADMIN_PASSWORD)
        )
        assert reply.user.role == users_pb2.ROLE_ADMIN

    async def test_existing_user_is_not_promoted_when_the_password_is_not_theirs(self, servers):
        server = await servers.start()
        account = await signed_up(server.stubs)
        code, _stdout, stderr = await _create_admin(server.database_url, account.username)
        assert code != 0
        assert "not promoted" in stderr
        assert "Traceback" not in stderr
        reply = await server.stubs.users.Login(
            users_pb2.LoginRequest(username=account.username, password=PASSWORD)
        )
        assert reply.user.role == users_pb2.ROLE_USER
