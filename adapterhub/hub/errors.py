"""HTTP errors: one JSON shape, ``{"error": …, "hint": …, "code": …}``, for every failure.

The status and code come from the error's class (:mod:`adapterhub.errors`); clients map the
code back to the same class. Hugging Face clients read ``X-Error-Code`` (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``) and ``X-Error-Message``; every error carries them.
Header values are reduced to printable ASCII first: a name with control characters in an
error message must not break the response (or forge a header).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from adapterhub.errors import (AdapterHubError, AdapterNotFoundError, InternalError,
                               InvalidRequestError, MethodNotAllowedError)

log = logging.getLogger("adapterhub.hub")
HEADER_MAX = 300


def header_safe(text: str) -> str:
    """``text`` as a header value: printable ASCII only (anything else becomes ``?``)."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(text)[:HEADER_MAX])


def error_response(exc: AdapterHubError) -> Response:
    body = {"error": exc.message, "hint": exc.hint or None, "code": exc.code,
            **exc.wire_fields()}
    headers = {"X-Error-Code": exc.code, "X-Error-Message": header_safe(exc.message),
               **{k: header_safe(v) for k, v in exc.headers.items()}}
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="adapterhub"')
    return Response(json.dumps(body, separators=(",", ":")), status_code=exc.status,
                    headers=headers, media_type="application/json")


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the JSON shape above."""

    @app.exception_handler(AdapterHubError)
    async def known(request: Request, exc: AdapterHubError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(InvalidRequestError(
            f"malformed request: {where}: {first.get('msg', 'invalid')}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.__cause__, AdapterHubError):  # raised while FastAPI read a body
            return error_response(exc.__cause__)
        if exc.status_code == 404:
            error: AdapterHubError = AdapterNotFoundError(
                f"no route {request.method} {request.url.path[:200]}")
        elif exc.status_code == 405:
            error = MethodNotAllowedError(f"{request.method} is not allowed on "
                                          f"{request.url.path[:200]}")
        else:
            error = InvalidRequestError(str(exc.detail)[:300])
        error.headers.update(exc.headers or {})
        return error_response(error)

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        log.info("client disconnected during %s %r", request.method, request.url.path)
        return error_response(InvalidRequestError("the client disconnected before the body "
                                                  "was complete"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %r", request.method, request.url.path)
        return error_response(InternalError(f"internal error: {type(exc).__name__}"))
