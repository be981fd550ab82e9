"""HTTP errors: one JSON shape, ``{"error": …, "hint": …, "code": …}``, for every failure.

Hugging Face clients read ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``) and ``X-Error-Message``; every error carries them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from adapterhub import errors as ah
from registry_db import errors as db
from registry_db.manifest import ManifestError
from registry_db.tokens import TokenError

log = logging.getLogger("adapterhub.hub")


class HubError(Exception):
    """A request the hub refuses, with the status code to refuse it with."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 hint: str = "", headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "Error")
        self.hint = hint
        self.headers = headers or {}
        self.extra = extra or {}


_CODES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
          409: "Conflict", 412: "PreconditionFailed", 413: "PayloadTooLarge",
          416: "RangeNotSatisfiable", 422: "Unprocessable", 500: "InternalError",
          503: "Unavailable"}

#: registry and adapterhub errors → status codes (most specific class first)
_STATUS: list[tuple[type[Exception], int]] = [
    (TokenError, 401), (ah.AuthenticationError, 401), (ah.PermissionDeniedError, 403),
    (db.MissingBlobsError, 409), (ah.MissingBlobsError, 409),
    (db.MissingParentsError, 409), (db.InvalidNameError, 400), (ah.RefError, 400),
    (db.NotFoundError, 404), (ah.AdapterNotFoundError, 404), (db.ConflictError, 409),
    (db.CorruptionError, 422), (ah.IntegrityError, 422), (ah.FormatError, 422),
    (ah.ConfigError, 422), (ah.ExportError, 422), (ah.UnknownMethodError, 422),
    (ManifestError, 422), (db.SchemaError, 503), (db.RegistryDBError, 400),
    (ah.AdapterHubError, 400),
]


def from_exception(exc: Exception) -> HubError:
    """The HubError for a registry or adapterhub error (same message and hint)."""
    status = next(code for cls, code in _STATUS if isinstance(exc, cls))
    extra = {"missing": list(exc.digests)} if isinstance(
        exc, (db.MissingBlobsError, ah.MissingBlobsError)) else {}
    code = "MissingBlobs" if extra else type(exc).__name__
    message = getattr(exc, "message", None) or f"invalid manifest: {exc}"
    return HubError(status, message, hint=getattr(exc, "hint", ""),
                    code=code, extra=extra)


def response(err: HubError) -> JSONResponse:
    body = {"error": err.message, "hint": err.hint or None, "code": err.code, **err.extra}
    headers = {"X-Error-Code": err.code,
               "X-Error-Message": err.message.encode("ascii", "replace").decode()[:300],
               **err.headers}
    if err.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="adapterhub"')
    return JSONResponse(body, status_code=err.status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the JSON shape above."""

    @app.exception_handler(HubError)
    async def hub_error(request: Request, exc: HubError) -> JSONResponse:
        return response(exc)

    @app.exception_handler(db.RegistryDBError)
    @app.exception_handler(ah.AdapterHubError)
    @app.exception_handler(ManifestError)
    async def registry_error(request: Request, exc: Exception) -> JSONResponse:
        return response(from_exception(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return response(HubError(400, f"malformed request: {where}: "
                                      f"{first.get('msg', 'invalid')}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, HubError):  # FastAPI wraps errors raised reading a body
            return response(exc.__cause__)
        message = f"no route {request.method} {request.url.path}" if exc.status_code == 404 \
            else str(exc.detail)
        return response(HubError(exc.status_code, message, headers=dict(exc.headers or {})))

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> JSONResponse:
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return response(HubError(400, "the client disconnected before the body was complete"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return response(HubError(500, f"internal error: {type(exc).__name__}",
                                 hint="See the hub's log"))
