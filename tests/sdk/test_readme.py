"""The README's SDK program, run verbatim against a real server: what people copy must work."""

from __future__ import annotations

import re
import sys

from sendinchat import Client
from tests.contract import tools
from tests.harness import REPO

SECTION = "## From Python: the typed SDK"


def sdk_program() -> str:
    """The first python block of the README's SDK section, as written."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(SECTION) :]
    found = re.search(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert found is not None, f"no python block under {SECTION!r}"
    return found.group(1)


class TestReadmeProgram:
    def test_is_a_complete_program(self):
        program = sdk_program()
        assert "asyncio.run(main())" in program
        compile(program, "README.md", "exec")

    async def test_runs_and_pays_and_chats_when_alice_has_money(self, server, admin):
        async with Client(server.address) as alice:
            await alice.register("alice", "correct-horse")  # the program's users and password
        await admin.deposit(to_username="alice", currency="USD", amount_minor=1000)
        result = await tools.run(
            sys.executable, "-c", sdk_program(), env={"SENDINCHAT_TARGET": server.address}
        )
        assert result.returncode == 0, result.stderr
        assert "bob received 250 USD tea" in result.stdout
        assert "bob got: hi bob" in result.stdout

    async def test_runs_and_explains_when_alice_has_no_money(self, server):
        result = await tools.run(
            sys.executable, "-c", sdk_program(), env={"SENDINCHAT_TARGET": server.address}
        )
        assert result.returncode == 0, result.stderr
        assert "alice has no USD yet" in result.stdout
        assert "bob got: hi bob" in result.stdout
