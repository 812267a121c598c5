"""Building a gRPC server the same way for every tier: errors, auth, health, reflection, limits."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llmk import errors
from llmk.platform.grpc_errors import error_metadata, status_of
from llmk.platform.security import HEALTH_METHODS, Tls, message_options, server_credentials, token_matches

log = logging.getLogger(__name__)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Turns llmk errors raised by any handler into statuses; checks the bearer token.

    `mutating` names the full methods that need the token when one is configured; with `auth_reads`
    every method does, except health checks.
    """

    def __init__(self, token: str, mutating: set[str], auth_reads: bool = False):
        self.token = token
        self.mutating = mutating
        self.auth_reads = auth_reads

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        guarded = details.method in self.mutating or (
            self.auth_reads and not details.method.startswith(HEALTH_METHODS)
        )
        if self.token and guarded and not token_matches(details.invocation_metadata, self.token):
            return _deny(handler)
        return _wrap(handler)


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "this call needs the server's token: send 'authorization: Bearer TOKEN'",
        )

    return _replace(handler, lambda _fn: abort)


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        def stream(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from fn(request, context)
            except errors.LlmkError as e:
                context.set_trailing_metadata(error_metadata(e))
                context.abort(status_of(e), str(e))

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(request, context)
            except errors.LlmkError as e:
                context.set_trailing_metadata(error_metadata(e))
                context.abort(status_of(e), str(e))

        return stream if handler.response_streaming else unary

    return _replace(handler, guard)


def _replace(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    kinds = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attr, make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(wrap(getattr(handler, attr)), handler.request_deserializer, handler.response_serializer)


def make_server(
    register: Iterable[Callable[[grpc.Server], None]],
    service_names: Iterable[str],
    address: str,
    token: str = "",
    mutating: Iterable[str] = (),
    max_message_bytes: int = 8 << 20,
    workers: int = 16,
    tls: Tls | None = None,
    auth_reads: bool = False,
) -> tuple[grpc.Server, int]:
    """A started-ready server with health and reflection; returns it and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        interceptors=[ErrorInterceptor(token, set(mutating), auth_reads)],
        # Off, so that a second server on a taken port fails to start instead of sharing its connections.
        options=[*message_options(max_message_bytes), ("grpc.so_reuseport", 0)],
    )
    for add in register:
        add(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    for name in [*names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = (
            server.add_secure_port(address, server_credentials(tls))
            if tls
            else server.add_insecure_port(address)
        )
    except RuntimeError:  # gRPC raises when it cannot bind; older releases returned 0
        port = 0
    if port == 0:
        raise errors.Unavailable(f"could not listen on {address}: the port is taken or the address is bad")
    return server, port
