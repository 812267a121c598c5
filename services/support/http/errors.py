"""Every failure as OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`.

Domain errors (llmk.errors) get their HTTP status from one table, in one handler; the framework's own
refusals (a body that is not JSON or has the wrong shape, an unknown path) are written in the same shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from llmk import errors

# the first class in an error's MRO found here decides (TooLarge before InvalidInput)
STATUSES: dict[type[errors.LlmkError], tuple[int, str, str]] = {
    errors.TooLarge: (413, "invalid_request_error", "request_too_large"),
    errors.InvalidInput: (400, "invalid_request_error", "invalid_value"),
    errors.Unauthenticated: (401, "authentication_error", "invalid_api_key"),
    errors.NotFound: (404, "invalid_request_error", "not_found"),
    errors.AlreadyExists: (409, "invalid_request_error", "already_exists"),
    errors.Conflict: (409, "invalid_request_error", "conflict"),
    errors.FailedPrecondition: (409, "invalid_request_error", "version_changed"),
    errors.ResourceExhausted: (429, "rate_limit_error", "queue_full"),
    errors.Unavailable: (503, "server_error", "unavailable"),
}


def status_of(error: errors.LlmkError) -> tuple[int, str, str]:
    for cls in type(error).__mro__:
        if cls in STATUSES:
            return STATUSES[cls]
    return 500, "server_error", "internal_error"


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def llmk_error(error: errors.LlmkError) -> JSONResponse:
    status, kind, code = status_of(error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(str(error), kind, code), status, headers=headers)


def install(app: FastAPI) -> None:
    async def domain(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, errors.LlmkError)
        return llmk_error(error)

    async def invalid(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0]
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            where = []
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        else:
            message = f"{'.'.join(where) or 'body'}: {first['msg']}"
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_value", ".".join(where) or None), 400
        )

    async def http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        return JSONResponse(
            error_body(str(error.detail), "invalid_request_error", str(error.status_code)), error.status_code
        )

    app.add_exception_handler(errors.LlmkError, domain)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http)
