"""Optional TLS: SENDINCHAT_TLS_CERT_FILE / _KEY_FILE make the server speak TLS only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.contract import tools

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl CLI for a test cert"
)


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class TestTls:
    async def test_serves_health_over_tls_when_cert_and_key_are_set(self, servers, certificate):
        cert, key = certificate
        server = await servers.start(tls_cert_file=cert, tls_key_file=key)
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(server.address, credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[attr-defined]  # typeshed's HealthStub declares no methods
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def test_refuses_plaintext_when_tls_is_on(self, servers, certificate):
        cert, key = certificate
        server = await servers.start(tls_cert_file=cert, tls_key_file=key)
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]  # as above
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_the_healthcheck_command_reports_serving_over_tls(self, servers, certificate):
        cert, key = certificate
        server = await servers.start(tls_cert_file=cert, tls_key_file=key)
        env = {
            **os.environ,
            "SENDINCHAT_ADDRESS": f"0.0.0.0:{server.running.port}",
            "SENDINCHAT_TLS_CERT_FILE": str(cert),
            "SENDINCHAT_TLS_KEY_FILE": str(key),
        }
        result = await tools.run(sys.executable, "-m", "server", "healthcheck", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "SERVING"


@pytest.fixture
def other_key(tmp_path):
    """A private key of no certificate."""
    key = tmp_path / "other.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    return key


@pytest.fixture
def encrypted_key(certificate, tmp_path):
    """The certificate's own key, encrypted with a passphrase."""
    key = tmp_path / "encrypted.key"
    subprocess.run(
        [
            "openssl",
            "pkey",
            "-in",
            str(certificate[1]),
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            str(key),
        ],
        check=True,
        capture_output=True,
    )
    return key


class TestBadFiles:
    async def test_an_encrypted_key_is_one_line_and_no_passphrase_prompt(
        self, servers, processes, certificate, encrypted_key
    ):
        process = await processes.start(
            await servers.database(),
            SENDINCHAT_TLS_CERT_FILE=str(certificate[0]),
            SENDINCHAT_TLS_KEY_FILE=str(encrypted_key),
        )
        assert await process.wait() == 2
        assert "SENDINCHAT_TLS_KEY_FILE: the key is encrypted" in process.lines[-1], process.stderr
        assert "pass phrase" not in process.stderr

    @pytest.mark.parametrize("broken", ["cert", "key", "other key"])
    async def test_the_server_exits_with_one_line_naming_the_file_at_fault(
        self, servers, processes, certificate, other_key, tmp_path, broken
    ):
        cert, key = certificate
        if broken == "cert":
            cert = tmp_path / "garbage.pem"
            cert.write_text("not a certificate")
        elif broken == "key":
            key = tmp_path / "garbage.key"
            key.write_text("not a key")
        else:
            key = other_key
        process = await processes.start(
            await servers.database(), SENDINCHAT_TLS_CERT_FILE=str(cert), SENDINCHAT_TLS_KEY_FILE=str(key)
        )
        assert await process.wait() == 2
        at_fault = "SENDINCHAT_TLS_CERT_FILE:" if broken == "cert" else "SENDINCHAT_TLS_KEY_FILE:"
        assert at_fault in process.lines[-1], process.stderr
        assert "Traceback" not in process.stderr
        assert "SENDINCHAT_ADDRESS" not in process.stderr
