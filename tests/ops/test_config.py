"""Configuration is validated at start: one clear line naming the variable, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import Config, ConfigError
from tests.harness import TEST_JWT_SECRET
from tests.ops.process import run_server_command, server_env

DB = "postgresql://sendinchat@127.0.0.1:1/sendinchat"


class TestServerStart:
    @pytest.mark.parametrize(
        ("env", "variable"),
        [
            ({"SENDINCHAT_ADDRESS": "nonsense"}, "SENDINCHAT_ADDRESS"),
            ({"SENDINCHAT_ADDRESS": "127.0.0.1:70000"}, "SENDINCHAT_ADDRESS"),
            ({"SENDINCHAT_BCRYPT_ROUNDS": "99"}, "SENDINCHAT_BCRYPT_ROUNDS"),
            ({"SENDINCHAT_BCRYPT_ROUNDS": "twelve"}, "SENDINCHAT_BCRYPT_ROUNDS"),
            ({"DATABASE_URL": DB}, "SENDINCHAT_JWT_SECRET"),
            ({"DATABASE_URL": DB, "SENDINCHAT_JWT_SECRET": "short"}, "SENDINCHAT_JWT_SECRET"),
            ({"DATABASE_URL": "mysql://nope"}, "DATABASE_URL"),
            ({"DATABASE_URL": "postgresql://[bad"}, "DATABASE_URL"),
            ({"DATABASE_URL": "postgresql://u:hunter2@h:abc/db"}, "DATABASE_URL"),
            ({"DATABASE_URL": "postgresql://u@h/db?sslmode=bogus"}, "DATABASE_URL"),
            ({"DATABASE_URL": "postgresql://u@127.0.0.1:5432,/db"}, "DATABASE_URL"),
            ({"DATABASE_URL": "postgresql://u@h/db?gsslib=bogus"}, "DATABASE_URL"),
            (
                {"DATABASE_URL": "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/no/such.crt"},
                "DATABASE_URL",
            ),
            ({"SENDINCHAT_DATA_DIR": "/tmp/sendinchat tests/with a space"}, "SENDINCHAT_DATA_DIR"),
            ({"SENDINCHAT_LOG_LEVEL": "LOUD"}, "SENDINCHAT_LOG_LEVEL"),
            ({"SENDINCHAT_ADDRESS": "127.0.0.1:\u0665\u0661\u0660\u0660\u0663"}, "SENDINCHAT_ADDRESS"),
            ({"SENDINCHAT_BCRYPT_ROUNDS": "\u0661\u0662"}, "SENDINCHAT_BCRYPT_ROUNDS"),
            ({"DATABASE_URL": DB, "SENDINCHAT_JWT_SECRET": " " * 40}, "SENDINCHAT_JWT_SECRET"),
            (
                {"SENDINCHAT_ADMIN_USERNAME": "r", "SENDINCHAT_ADMIN_PASSWORD": "long enough"},
                "SENDINCHAT_ADMIN_USERNAME",
            ),
            (
                {"SENDINCHAT_ADMIN_USERNAME": "root", "SENDINCHAT_ADMIN_PASSWORD": "x"},
                "SENDINCHAT_ADMIN_PASSWORD",
            ),
            ({"SENDINCHAT_ADMIN_USERNAME": "root"}, "SENDINCHAT_ADMIN_USERNAME"),
            ({"SENDINCHAT_DATA_DIR": "/proc/no-such-folder"}, "SENDINCHAT_DATA_DIR"),
            ({"SENDINCHAT_DATA_DIR": "/etc/hostname"}, "SENDINCHAT_DATA_DIR"),
        ],
        ids=lambda value: next(iter(value.values())) if isinstance(value, dict) else value,
    )
    def test_exits_non_zero_with_one_line_naming_the_variable_when_a_value_is_bad(self, env, variable):
        code, stderr = run_server_command(env=server_env(**env))
        assert code != 0
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert variable in lines[0]
        assert "Traceback" not in stderr

    def test_does_not_echo_the_secret_when_it_is_too_short(self):
        secret = "tiny-but-secret-value"
        code, stderr = run_server_command(env=server_env(DATABASE_URL=DB, SENDINCHAT_JWT_SECRET=secret))
        assert code != 0
        assert "SENDINCHAT_JWT_SECRET" in stderr
        assert secret not in stderr

    def test_create_admin_refuses_a_short_password_in_one_line(self):
        code, stderr = run_server_command(
            "create-admin", "--username", "zz-admin", env=server_env(SENDINCHAT_ADMIN_PASSWORD="x")
        )
        assert code != 0
        assert stderr.strip().splitlines() == [stderr.strip()]
        assert "SENDINCHAT_ADMIN_PASSWORD" in stderr

    def test_create_admin_without_the_variable_or_a_terminal_says_so_in_one_line(self):
        code, stderr = run_server_command(
            "create-admin", "--username", "zz-admin", env=server_env()
        )  # no stdin
        assert code == 2
        assert stderr.strip().splitlines() == [stderr.strip()]
        assert "SENDINCHAT_ADMIN_PASSWORD" in stderr and "terminal" in stderr

    def test_migrate_command_also_refuses_when_a_value_is_bad(self):
        code, stderr = run_server_command("migrate", env=server_env(SENDINCHAT_BCRYPT_ROUNDS="3"))
        assert code != 0
        assert stderr.strip().splitlines() == [stderr.strip()]
        assert "SENDINCHAT_BCRYPT_ROUNDS" in stderr


class TestConfigFromEnv:
    def test_returns_defaults_when_environment_is_empty(self):
        config = Config.from_env({})
        assert config == Config()
        assert config.embedded

    def test_parses_every_kind_of_value_when_they_are_valid(self, tmp_path: Path) -> None:
        config = Config.from_env(
            {
                "SENDINCHAT_ADDRESS": "0.0.0.0:6000",
                "DATABASE_URL": "postgresql://u@h/db",
                "SENDINCHAT_JWT_SECRET": TEST_JWT_SECRET,
                "SENDINCHAT_BCRYPT_ROUNDS": "10",
                "SENDINCHAT_SHUTDOWN_GRACE_SECONDS": "2.5",
                "SENDINCHAT_METRICS_ADDRESS": "off",
                "SENDINCHAT_DATA_DIR": str(tmp_path),
                "SENDINCHAT_LOG_LEVEL": "debug",
                "SENDINCHAT_TRANSFER_BATCH_LINGER_MS": "0.5",
                "SENDINCHAT_SCHED_BATCH": "off",
            }
        )
        assert config.address == "0.0.0.0:6000"
        assert not config.embedded
        assert config.jwt_secret == TEST_JWT_SECRET
        assert config.bcrypt_rounds == 10
        assert config.shutdown_grace_seconds == 2.5
        assert config.metrics_address == ""
        assert config.data_dir == tmp_path
        assert config.log_level == "DEBUG"
        assert config.transfer_batch_linger_ms == 0.5
        assert config.sched_batch is False

    def test_treats_empty_values_as_unset(self):
        assert Config.from_env({"SENDINCHAT_BCRYPT_ROUNDS": "", "DATABASE_URL": ""}) == Config()

    @pytest.mark.parametrize(
        ("env", "variable"),
        [
            ({"SENDINCHAT_ADDRESS": "localhost"}, "SENDINCHAT_ADDRESS"),
            ({"SENDINCHAT_BCRYPT_ROUNDS": "3"}, "SENDINCHAT_BCRYPT_ROUNDS"),
            ({"SENDINCHAT_DB_POOL_SIZE": "0"}, "SENDINCHAT_DB_POOL_SIZE"),
            ({"SENDINCHAT_SHUTDOWN_GRACE_SECONDS": "-1"}, "SENDINCHAT_SHUTDOWN_GRACE_SECONDS"),
            ({"SENDINCHAT_TRANSFER_BATCH_LINGER_MS": "1001"}, "SENDINCHAT_TRANSFER_BATCH_LINGER_MS"),
            ({"SENDINCHAT_SCHED_BATCH": "maybe"}, "SENDINCHAT_SCHED_BATCH"),
            ({"SENDINCHAT_TLS_CERT_FILE": "/no/such/cert.pem"}, "SENDINCHAT_TLS_CERT_FILE"),
            ({"DATABASE_URL": "postgresql://u@h/db"}, "SENDINCHAT_JWT_SECRET"),
            ({"SENDINCHAT_JWT_SECRET": "x" * 31}, "SENDINCHAT_JWT_SECRET"),
        ],
    )
    def test_raises_config_error_naming_the_variable_when_a_value_is_bad(self, env, variable):
        with pytest.raises(ConfigError) as caught:
            Config.from_env(env)
        assert str(caught.value).startswith(variable)

    def test_ignores_the_admin_settings_where_they_do_nothing(self) -> None:
        # They ensure an admin in embedded mode only: with DATABASE_URL, create-admin does that.
        env = {"DATABASE_URL": "postgresql://u@h/db", "SENDINCHAT_JWT_SECRET": TEST_JWT_SECRET}
        assert Config.from_env({**env, "SENDINCHAT_ADMIN_USERNAME": "r"}).admin_username == "r"

    def test_requires_both_tls_files_when_one_is_set(self, tmp_path: Path) -> None:
        cert = tmp_path / "cert.pem"
        cert.write_text("not really a certificate")
        with pytest.raises(ConfigError, match="SENDINCHAT_TLS_CERT_FILE"):
            Config.from_env({"SENDINCHAT_TLS_CERT_FILE": str(cert)})


class TestEveryVariable:
    def test_each_field_is_read_from_a_variable_the_readme_documents(self) -> None:
        from dataclasses import fields

        from server.config import _PARSERS, variable

        assert {f.name for f in fields(Config)} == set(_PARSERS)
        readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
        documented: set[str] = set()
        for line in readme.splitlines():
            if line.startswith("| `"):  # a row of the configuration table; `A_B` / `_C` names A_C too
                first, *suffixes = line.split("|")[1].strip().strip("`").split("` / `")
                documented.add(first)
                cuts = [i for i, c in enumerate(first) if c == "_"]
                documented.update(first[:cut] + suffix for cut in cuts for suffix in suffixes)
        assert [variable(f) for f in _PARSERS if variable(f) not in documented] == []
