"""Transport security over gRPC: TLS, mutual TLS with certificates made here, and the token on reads."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.errors import Unauthenticated, Unavailable
from services.store.interface import StoreClient

pytestmark = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
W = {"w": torch.arange(4, dtype=torch.float32)}


def issue(folder: Path, name: str, ca: tuple | None = None, server: bool = False) -> tuple:
    """A key and a certificate for `name`, signed by `ca` (key, cert) or self-signed as a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca[1].subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca[0] if ca else key, hashes.SHA256())
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a stranger's certificate."""
    ca = issue(tmp_path, "ca")
    issue(tmp_path, "server", ca, server=True)
    issue(tmp_path, "client", ca)
    issue(tmp_path, "stranger", issue(tmp_path, "other-ca"))
    return tmp_path


def tls(pki: Path, name: str | None, ca: str | None = "ca") -> dict:
    cert = {"tls_cert": pki / f"{name}.pem", "tls_key": pki / f"{name}.key"} if name else {}
    return {**cert, "tls_ca": pki / f"{ca}.pem" if ca else None}


def client_of(settings: Settings, address: str, **overrides: object) -> StoreClient:
    return Deployment(settings.model_copy(update={"store_address": address, **overrides})).store()


def test_mutual_tls_serves_only_clients_with_a_certificate_from_its_ca(
    settings: Settings, grpc_server: Callable, pki: Path
) -> None:
    served = grpc_server(settings.model_copy(update=tls(pki, "server")))
    trusted = client_of(settings, served.address, **tls(pki, "client"))
    try:
        v = trusted.create_model("m", W, {}, {})
        assert torch.equal(trusted.fetch("m")["w"], W["w"])
        assert trusted.version("m").id == v.id
    finally:
        trusted.close()
    refused = {
        "no certificate": tls(pki, None),
        "a certificate from another CA": tls(pki, "stranger"),
        "plaintext": {},
    }
    for label, overrides in refused.items():
        client = client_of(settings, served.address, **overrides)
        try:
            with pytest.raises(Unavailable):  # noqa: PT012 - fail() runs only if nothing was raised, naming the case
                client.models()
                pytest.fail(f"{label}: served")
        finally:
            client.close()


def test_tls_without_a_ca_serves_any_client_that_trusts_it(
    settings: Settings, grpc_server: Callable, pki: Path
) -> None:
    served = grpc_server(settings.model_copy(update=tls(pki, "server", ca=None)))
    client = client_of(settings, served.address, **tls(pki, None))
    try:
        client.create_model("m", W, {}, {})
        assert [m.name for m in client.models()] == ["m"]
    finally:
        client.close()


def test_reads_need_the_token_when_configured(settings: Settings, grpc_server: Callable) -> None:
    served = grpc_server(settings.model_copy(update={"auth_token": "s3cret", "auth_reads": True}))
    owner = client_of(settings, served.address, auth_token="s3cret")
    anonymous = client_of(settings, served.address)
    wrong = client_of(settings, served.address, auth_token="s3cre")
    try:
        owner.create_model("m", W, {}, {})
        assert owner.version("m").id == 1
        assert torch.equal(owner.fetch("m")["w"], W["w"])
        for client in (anonymous, wrong):
            for read in (client.models, lambda c=client: c.version("m"), lambda c=client: c.fetch("m")):
                with pytest.raises(Unauthenticated):
                    read()
        with grpc.insecure_channel(served.address) as channel:  # probes carry no token
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for c in (owner, anonymous, wrong):
            c.close()


def test_llmk_health_checks_a_tls_server_with_the_tls_settings(
    settings: Settings, grpc_server: Callable, pki: Path
) -> None:
    served = grpc_server(settings.model_copy(update=tls(pki, "server")))
    llmk = [str(Path(sys.executable).with_name("llmk")), "health", served.address]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    with_certificate = {f"LLMK_{k.upper()}": str(v) for k, v in tls(pki, "client").items()}
    ok = subprocess.run(llmk, env=env | with_certificate, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout, ok.stderr
    plain = subprocess.run(llmk, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 11
    assert plain.stderr.startswith("llmk: error: ")


def test_a_key_that_is_not_the_certificates_is_refused_in_one_line(
    settings: Settings, pki: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env |= {
        "LLMK_HOME": str(settings.home),
        "LLMK_TLS_CERT": str(pki / "server.pem"),
        "LLMK_TLS_KEY": str(pki / "client.key"),  # another certificate's key
        "PYTHONPATH": "shared:.",
    }
    command = [sys.executable, "-m", "llmk.cli.main", "serve", "store", "--listen", "127.0.0.1:0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("llmk: error: LLMK_TLS_KEY")
    assert "does not match LLMK_TLS_CERT" in done.stderr
