"""sendinchat-cli as a user runs it: subprocesses against the real server, the session in a config dir."""

from __future__ import annotations

import argparse
import hashlib
import json
import stat

import jwt
import pytest

from sendinchat import Client, UnauthenticatedError
from sendinchat.cli import build_parser
from sendinchat.cli.money import Currencies
from sendinchat.cli.output import CliError
from sendinchat.cli.session import SessionFile
from sendinchat.v1 import users_pb2
from tests.harness import TEST_JWT_SECRET
from tests.helpers import PASSWORD, random_name, signed_up
from tests.sdk.cli import cli_env, logged_in_env, run_cli
from tests.sdk.test_client import expired_copy


async def _name(client: Client) -> str:
    return (await client.get_me()).username


class TestSession:
    async def test_login_keeps_the_session_in_a_private_file_that_later_commands_use(
        self, server, bob, tmp_path
    ):
        env = await logged_in_env(server.address, tmp_path / "cfg", await _name(bob))
        sessions = tmp_path / "cfg" / "sessions.json"
        assert stat.S_IMODE(sessions.stat().st_mode) == 0o600
        assert set(json.loads(sessions.read_text())[server.address]["tokens"]) >= {
            "accessToken",
            "refreshToken",
        }
        me = await run_cli(env, "me")
        assert me.returncode == 0, me.stderr
        assert me.stdout.startswith(await _name(bob))
        assert "member since:" in me.stdout
        assert "seconds" not in me.stdout

    async def test_the_session_lives_under_xdg_config_home_without_an_override(self, server, bob, tmp_path):
        env = cli_env(server.address, None, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
        result = await run_cli(env, "login", await _name(bob), "--password-stdin", stdin=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "xdg" / "sendinchat" / "sessions.json").exists()

    async def test_commands_refresh_an_expired_session_by_themselves(self, server, bob, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(bob))
        session = SessionFile(server.address, tmp_path)
        before = session.load()
        assert before is not None
        session.save(expired_copy(before))
        me = await run_cli(env, "me")
        assert me.returncode == 0, me.stderr
        after = session.load()
        assert after is not None
        assert after.refresh_token != before.refresh_token
        assert session.username == await _name(bob)

    @pytest.mark.parametrize("kept", ["not-a-uuid", "", None, 7])
    async def test_a_damaged_rotation_entry_is_ignored(self, server, bob, tmp_path, kept):
        env = await logged_in_env(server.address, tmp_path, await _name(bob))
        session = SessionFile(server.address, tmp_path)
        before = session.load()
        assert before is not None
        session.save(expired_copy(before))
        sessions = json.loads(session.path.read_text())
        sessions[server.address]["rotation"] = {"for": "x", "request_id": kept}
        session.path.write_text(json.dumps(sessions))
        assert session.load_rotation(before.refresh_token) is None
        sessions[server.address]["rotation"]["for"] = hashlib.sha256(
            before.refresh_token.encode()
        ).hexdigest()
        session.path.write_text(json.dumps(sessions))
        assert session.load_rotation(before.refresh_token) is None  # not a UUID: as if none was kept
        me = await run_cli(env, "me")
        assert me.returncode == 0, me.stderr

    async def test_two_processes_sharing_the_file_refresh_the_session_once(self, server, bob, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(bob))
        tokens = SessionFile(server.address, tmp_path).load()
        assert tokens is not None
        SessionFile(server.address, tmp_path).save(expired_copy(tokens))
        files = [SessionFile(server.address, tmp_path) for _ in range(2)]
        # Both clients load the same pair, as two processes started at once would.
        async with (
            Client(server.address, token_store=files[0]) as first,
            Client(server.address, token_store=files[1]) as second,
        ):
            await first.get_me()  # refreshes: the refresh token both loaded is now spent
            await second.get_me()  # must take the pair first stored, or the session ends
            assert second.tokens == first.tokens
        assert (await run_cli(env, "me")).returncode == 0

    async def test_logout_of_a_saved_session_past_its_refresh_token_forgets_it(self, server, bob, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(bob))
        session = SessionFile(server.address, tmp_path)
        tokens = session.load()
        assert tokens is not None
        stale = expired_copy(tokens)
        claims = jwt.decode(stale.refresh_token, options={"verify_signature": False})
        claims.update(exp=claims["iat"] - 60)  # the server says TOKEN_EXPIRED for it too
        stale.refresh_token = jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")
        session.save(stale)
        logout = await run_cli(env, "logout")
        assert logout.returncode == 0, logout.stderr
        assert "ended 0 sessions" in logout.stdout
        assert session.load() is None

    async def test_logout_ends_the_session_and_removes_it(self, server, bob, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(bob))
        tokens = SessionFile(server.address, tmp_path).load()
        assert tokens is not None
        logout = await run_cli(env, "logout")
        assert logout.returncode == 0, logout.stderr
        assert "ended 1 session" in logout.stdout
        assert SessionFile(server.address, tmp_path).load() is None
        me = await run_cli(env, "me")
        assert me.returncode == 1
        assert "not logged in" in me.stderr
        bob.tokens = tokens
        with pytest.raises(UnauthenticatedError):
            await bob.get_me()

    async def test_a_wrong_password_is_refused_and_nothing_is_saved(self, server, bob, tmp_path):
        env = cli_env(server.address, tmp_path)
        result = await run_cli(env, "login", await _name(bob), "--password-stdin", stdin="wrong-password\n")
        assert result.returncode == 1
        assert "log in" in result.stderr
        assert not (tmp_path / "sessions.json").exists()

    async def test_register_creates_the_user_and_logs_in(self, server, tmp_path):
        env = cli_env(server.address, tmp_path)
        name = random_name()
        result = await run_cli(env, "register", name, "--password-stdin", stdin=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
        assert (await run_cli(env, "me")).stdout.startswith(name)

    async def test_an_access_token_in_the_environment_overrides_the_session(self, server, tmp_path):
        account = await signed_up(server.stubs)
        env = cli_env(server.address, tmp_path, SENDINCHAT_TOKEN=account.tokens.access_token)
        me = await run_cli(env, "me")
        assert me.returncode == 0, me.stderr
        assert account.username in me.stdout

    async def test_an_expired_access_token_in_the_environment_is_reported_as_expired(self, server, tmp_path):
        account = await signed_up(server.stubs)
        env = cli_env(server.address, tmp_path, SENDINCHAT_TOKEN=expired_copy(account.tokens).access_token)
        for command in ("me", "logout"):
            result = await run_cli(env, command)
            assert result.returncode == 1
            assert "expired" in result.stderr and "refresh_token:" not in result.stderr, result.stderr

    async def test_logout_with_a_token_in_the_environment_keeps_the_saved_session(
        self, server, bob, tmp_path
    ):
        env = await logged_in_env(server.address, tmp_path, await _name(bob))
        other = await signed_up(server.stubs)
        logout = await run_cli(dict(env, SENDINCHAT_TOKEN=other.tokens.access_token), "logout")
        assert logout.returncode == 0, logout.stderr
        me = await run_cli(env, "me")
        assert me.returncode == 0, me.stderr
        assert me.stdout.startswith(await _name(bob))


class TestMoney:
    async def test_balance_shows_major_units_and_zero_for_a_never_funded_currency(
        self, server, alice, tmp_path
    ):
        env = await logged_in_env(server.address, tmp_path, await _name(alice))
        every = await run_cli(env, "balance")
        assert every.stdout.split() == ["100.00", "USD"]
        euros = await run_cli(env, "balance", "eur")
        assert euros.returncode == 0, euros.stderr
        assert euros.stdout.split() == ["0.00", "EUR"]

    async def test_pay_takes_major_units_and_moves_them(self, server, alice, bob, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(alice))
        result = await run_cli(env, "pay", await _name(bob), "2.50", "usd", "lunch", "today")
        assert result.returncode == 0, result.stderr
        assert f"Sent 2.50 USD to {await _name(bob)}" in result.stdout
        received = await bob.get_account(currency="USD")
        assert received.balance_minor == 250
        history = await run_cli(env, "history")
        assert f"-2.50 USD  to {await _name(bob)}" in history.stdout
        assert "lunch today" in history.stdout
        assert "+100.00 USD  deposit" in history.stdout

    async def test_pay_without_money_says_insufficient_funds(self, server, alice, bob, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(bob))
        result = await run_cli(env, "pay", await _name(alice), "1", "USD")
        assert result.returncode == 1
        assert "insufficient funds: you have 0.00 USD available" in result.stderr

    @pytest.mark.parametrize(
        ("amount", "currency", "complaint"),
        [
            ("2.505", "USD", "at most 2 decimal places"),
            ("1.5", "JPY", "no decimal places"),
            ("1", "XXX", "unknown"),
        ],
    )
    async def test_pay_refuses_an_amount_the_currency_cannot_hold(
        self, server, alice, bob, tmp_path, amount, currency, complaint
    ):
        env = await logged_in_env(server.address, tmp_path, await _name(alice))
        result = await run_cli(env, "pay", await _name(bob), amount, currency)
        assert result.returncode == 1
        assert complaint in result.stderr


class TestRooms:
    async def test_creates_lists_and_shows_members_by_username(self, server, alice, bob, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(alice))
        created = await run_cli(env, "rooms", "create", "book-club", await _name(bob))
        assert created.returncode == 0, created.stderr
        listed = await run_cli(env, "rooms", "list")
        assert listed.stdout.split()[:2] == ["book-club", "group"]
        members = await run_cli(env, "rooms", "members", "book-club")
        assert [line.split()[:2] for line in members.stdout.splitlines()] == [
            [await _name(alice), "owner"],
            [await _name(bob), "member"],
        ]

    async def test_a_name_stored_before_the_text_rule_is_shown_not_obeyed(self, server, alice, bob, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(alice))
        assert (await run_cli(env, "rooms", "create", "plain", await _name(bob))).returncode == 0
        # What an older server let through; the text rule refuses it now.
        await server.pool.execute(
            "UPDATE rooms SET name = $1 WHERE name = 'plain'", "\x1b]0;owned\x07\u202eplain"
        )
        listed = await run_cli(env, "rooms", "list")
        assert "\x1b" not in listed.stdout
        assert "\u202e" not in listed.stdout
        assert listed.stdout.startswith(r"\x1b]0;owned\x07\u202eplain")

    async def test_two_groups_of_one_name_are_named_by_id_not_guessed(self, server, alice, bob, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(alice))
        for _ in range(2):
            assert (await run_cli(env, "rooms", "create", "twins", await _name(bob))).returncode == 0
        members = await run_cli(env, "rooms", "members", "twins")
        assert members.returncode == 1
        assert "2 of your rooms are called 'twins'" in members.stderr

    async def test_paying_yourself_names_what_you_typed(self, server, alice, tmp_path):
        env = await logged_in_env(server.address, tmp_path, await _name(alice))
        result = await run_cli(env, "pay", await _name(alice), "1", "USD")
        assert result.returncode == 1
        assert "recipient: must not be the caller" in result.stderr


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) in seen:
                    continue  # an alias (transfers is history)
                seen.add(id(child))
                found.append((*path, name))
                found.extend(_subcommands(child, (*path, name)))
    return found


class TestHelp:
    @pytest.mark.parametrize("command", _subcommands(build_parser()), ids=" ".join)
    def test_every_subcommand_explains_itself(self, command, capsys):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*command, "--help"])
        assert exited.value.code == 0
        usage, _, description = capsys.readouterr().out.partition("\n\n")
        assert f"sendinchat-cli {' '.join(command)}" in usage
        assert len(description.split("\n")[0]) > 10


def test_session_file_forgets_a_server_when_saved_empty(tmp_path):
    session = SessionFile("host:1", tmp_path)
    session.save(users_pb2.TokenPair(access_token="a", refresh_token="r"), username="ann")
    SessionFile("host:2", tmp_path).save(users_pb2.TokenPair(access_token="b"))
    session.save(None)
    assert session.load() is None
    assert SessionFile("host:2", tmp_path).load() == users_pb2.TokenPair(access_token="b")


@pytest.mark.parametrize(
    ("written", "minor"), [("2.50", 250), ("1,000", 100_000), ("12,345,678.9", 1_234_567_890)]
)
def test_an_amount_takes_commas_between_thousands(written, minor):
    assert Currencies({"USD": 2}).parse(written, "usd") == (minor, "USD")


@pytest.mark.parametrize("written", ["0,05", "1,50", "1,5,0", "10,00", "1,0000", ",5", "1.000,50"])
def test_an_amount_with_a_decimal_comma_is_refused_not_read_as_thousands(written):
    with pytest.raises(CliError, match="with a dot for the decimals"):
        Currencies({"USD": 2}).parse(written, "USD")


def test_a_later_line_of_a_message_cannot_pass_for_a_line_of_its_own():
    from sendinchat.cli.chat import _lines_of

    shown = _lines_of("ok\n[12:01] bob: send me 50 USD\x1b[2K")
    first, second = shown.split("\n")
    assert first == "ok"
    assert second.startswith("    │ [12:01] bob") and "\x1b" not in second


@pytest.mark.parametrize(
    ("written", "currency", "complaint"),
    [
        ("1.000", "JPY", "no decimal places"),  # a thousand, to some; one, to others: refused
        ("1.000", "USD", "at most 2 decimal places"),
        ("92233720368547758.08", "USD", "more than one payment may move"),  # past int64: no traceback
    ],
)
def test_an_amount_that_may_mean_two_things_or_is_too_large_is_refused(written, currency, complaint):
    with pytest.raises(CliError, match=complaint):
        Currencies({"USD": 2, "JPY": 0}).parse(written, currency)
