"""The one mapping between llmk errors and gRPC status codes, for servers and clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from llmk import errors

TO_STATUS: dict[type[errors.LlmkError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.InvalidDelta: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Frozen: grpc.StatusCode.PERMISSION_DENIED,
    errors.Corrupt: grpc.StatusCode.DATA_LOSS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}
FROM_STATUS = {code: cls for cls, code in TO_STATUS.items() if cls is not errors.InvalidDelta}
ERROR_KEY = "llmk-error"  # trailing metadata naming the error class, where one status has several


def status_of(exc: errors.LlmkError | type[errors.LlmkError]) -> grpc.StatusCode:
    for cls in (exc if isinstance(exc, type) else type(exc)).__mro__:
        if cls in TO_STATUS:
            return TO_STATUS[cls]
    return grpc.StatusCode.UNKNOWN


def error_metadata(exc: errors.LlmkError) -> tuple[tuple[str, str], ...]:
    return ((ERROR_KEY, type(exc).__name__),)


def _named_class(e: grpc.RpcError, code: grpc.StatusCode) -> type[errors.LlmkError] | None:
    """The class the server named, when it is an llmk error that maps to this very status."""
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for key, value in trailing or ():
        cls = getattr(errors, value, None) if key == ERROR_KEY else None
        if isinstance(cls, type) and issubclass(cls, errors.LlmkError) and status_of(cls) == code:
            return cls
    return None


def from_rpc_error(e: grpc.RpcError) -> errors.LlmkError:
    """The llmk error a gRPC failure stands for, so callers handle both transports alike."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    detail = e.details() if hasattr(e, "details") else str(e)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in (detail or ""):
        return errors.InvalidInput(f"message too large: {detail}")
    cls = _named_class(e, code) or FROM_STATUS.get(
        code, errors.Unavailable if code == grpc.StatusCode.UNAVAILABLE else errors.LlmkError
    )
    return cls(detail or code.name)


def translate(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Client-side: re-raise gRPC failures as llmk errors."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper
