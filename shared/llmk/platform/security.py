"""Transport security for every tier: TLS or mutual TLS from three files, and the bearer token.

One set of settings serves both ends. A server with LLMK_TLS_CERT and LLMK_TLS_KEY speaks TLS; with
LLMK_TLS_CA as well it requires a client certificate signed by that CA (mutual TLS). A client with any
of them set speaks TLS, trusts LLMK_TLS_CA (else the system roots) and presents its own certificate
when it has one.
"""

from __future__ import annotations

import hmac
import ssl
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from llmk.config import Settings
from llmk.errors import InvalidInput

HEALTH_METHODS = "/grpc.health.v1.Health/"  # probes carry no token


@dataclass(frozen=True)
class Tls:
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @classmethod
    def of(cls, settings: Settings) -> Tls | None:
        if not (settings.tls_cert or settings.tls_key or settings.tls_ca):
            return None
        return cls(settings.tls_cert, settings.tls_key, settings.tls_ca)


def server_credentials(tls: Tls) -> grpc.ServerCredentials:
    if not (tls.cert and tls.key):
        raise InvalidInput("a TLS server needs both LLMK_TLS_CERT and LLMK_TLS_KEY")
    _check_pair(tls.cert, tls.key)
    return grpc.ssl_server_credentials(
        [(_read(tls.key, "LLMK_TLS_KEY"), _read(tls.cert, "LLMK_TLS_CERT"))],
        root_certificates=_read(tls.ca, "LLMK_TLS_CA") if tls.ca else None,
        require_client_auth=tls.ca is not None,
    )


def open_channel(
    address: str, options: Sequence[tuple[str, Any]], tls: Tls | None = None, token: str = ""
) -> grpc.Channel:
    """A channel to `address`: TLS when configured, the token (if any) attached to every call."""
    if tls is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        if bool(tls.cert) != bool(tls.key):
            raise InvalidInput("a client certificate needs both LLMK_TLS_CERT and LLMK_TLS_KEY")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca, "LLMK_TLS_CA") if tls.ca else None,
            private_key=_read(tls.key, "LLMK_TLS_KEY") if tls.key else None,
            certificate_chain=_read(tls.cert, "LLMK_TLS_CERT") if tls.cert else None,
        )
        channel = grpc.secure_channel(address, credentials, options=options)
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


def message_options(max_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)]


class ServiceClient:
    """A channel to one llmk service: TLS when configured, the token (if any) sent with every call."""

    def __init__(self, address: str, token: str, max_message_bytes: int, tls: Tls | None):
        self.channel = open_channel(address, message_options(max_message_bytes), tls, token)

    def close(self) -> None:
        self.channel.close()


def token_matches(metadata: Sequence[tuple[str, Any]] | None, token: str) -> bool:
    """Constant time: how much of a guess matched must not show in how long the refusal takes."""
    given = dict(metadata or ()).get("authorization", "")
    given_bytes = given.encode() if isinstance(given, str) else bytes(given)
    return hmac.compare_digest(given_bytes, f"Bearer {token}".encode())


class _Details(
    namedtuple("_Details", "method timeout metadata credentials wait_for_ready compression"),
    grpc.ClientCallDetails,
):
    pass


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends `authorization: Bearer TOKEN` on every call, so servers that require it on reads get it."""

    def __init__(self, token: str):
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        return _Details(
            details.method,
            details.timeout,
            [*metadata, self.header],
            details.credentials,
            details.wait_for_ready,
            getattr(details, "compression", None),
        )

    def _call(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


def _check_pair(cert: Path, key: Path) -> None:
    """The key must belong to the certificate: gRPC would only say it cannot listen on the port."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise InvalidInput(
            f"LLMK_TLS_KEY {key} does not match LLMK_TLS_CERT {cert}, or either is not PEM: {e.reason}"
        ) from None
    except OSError as e:
        raise InvalidInput(f"LLMK_TLS_CERT or LLMK_TLS_KEY: cannot read {e.filename}: {e.strerror}") from None


def _read(path: Path | None, setting: str) -> bytes:
    try:
        return Path(path or "").read_bytes()
    except OSError as e:
        raise InvalidInput(f"{setting}: cannot read {path}: {e.strerror}") from None
