"""sendinchat-cli as a user runs it: a subprocess against the real server, the token in the environment."""

from __future__ import annotations

import os
import sys

from tests import harness
from tests.contract import tools
from tests.helpers import signed_up


async def _cli(server: harness.TestServer, token: str, *args: str) -> tools.Result:
    env = {**os.environ, "SENDINCHAT_TOKEN": token}
    return await tools.run(sys.executable, "-m", "sendinchat.cli", "--target", server.address, *args, env=env)


class TestCli:
    async def test_me_prints_the_user_when_the_token_is_valid(self, server):
        account = await signed_up(server.stubs)
        result = await _cli(server, account.tokens.access_token, "me")
        assert result.returncode == 0, result.stderr
        assert account.username in result.stdout

    async def test_logout_ends_the_session_and_the_token_stops_working(self, server):
        account = await signed_up(server.stubs)
        logout = await _cli(server, account.tokens.access_token, "logout")
        assert logout.returncode == 0, logout.stderr
        assert "ended 1 session;" in logout.stdout
        me = await _cli(server, account.tokens.access_token, "me")
        assert me.returncode == 1
        assert "UNAUTHENTICATED" in me.stderr
