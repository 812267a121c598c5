"""`llmk health ADDRESS`: the grpc.health.v1 check that container health checks and probes run.

Imports stay light (grpc and the health stubs only): a health check runs every few seconds in every
container, so it must start fast and never load torch.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

NOT_SERVING = 1
UNREACHABLE = 11  # the exit code of llmk.errors.Unavailable


def register(app: typer.Typer) -> None:
    app.command()(health)


def health(
    address: Annotated[str, typer.Argument(help="host:port of an llmk tier")],
    service: Annotated[str, typer.Option(help="Service name to check; empty = the whole server")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer")] = 3.0,
) -> None:
    """Exit 0 when the tier at ADDRESS answers SERVING, else print why on one line and exit non-zero."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from llmk.config import Settings
    from llmk.domain.addresses import check_address
    from llmk.platform.security import Tls, open_channel

    check_address(address)
    with open_channel(address, [], Tls.of(Settings())) as channel:  # TLS when LLMK_TLS_* say so
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as e:
            detail = (e.details() or "").splitlines()[0] if e.details() else ""
            print(f"llmk: error: {address}: {e.code().name.lower()}: {detail}".rstrip(": "), file=sys.stderr)
            raise typer.Exit(UNREACHABLE) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"llmk: error: {address}{'/' + service if service else ''} is {status}", file=sys.stderr)
        raise typer.Exit(NOT_SERVING)
    print(f"{address}: {status}")
