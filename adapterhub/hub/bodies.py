"""Request and response bodies: strict JSON in, fast JSON out.

Request bodies are read only after the guard admitted the caller, within the route's size
limit (:mod:`adapterhub.hub.guard`), and parsed off the event loop with the strict parser
(:func:`registry_db.digests.parse_json`: no NaN, bounded nesting), so a hostile body is a
400, never a 500 or a stalled server.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from adapterhub.errors import FormatError, InvalidRequestError
from registry_db.digests import is_digest, parse_json


async def json_body(request: Request) -> Any:
    """FastAPI dependency: the request body as JSON."""
    raw = await request.body()
    try:
        return await run_in_threadpool(parse_json, raw, what="the request body")
    except FormatError as exc:
        raise InvalidRequestError(exc.message) from None


async def json_object(request: Request) -> dict[str, Any]:
    """FastAPI dependency: the request body as a JSON object."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return body


def json_response(data: Any, status_code: int = 200) -> Response:
    """JSON straight from ``json.dumps``: FastAPI's encoder takes ~40x longer on manifests."""
    return Response(json.dumps(data, separators=(",", ":")), status_code=status_code,
                    media_type="application/json")


def json_response_with(data: dict[str, Any], **encoded: bytes) -> Response:
    """JSON of ``data`` plus fields whose values are JSON bytes already (a version's stored
    canonical manifest), spliced in rather than parsed and encoded again."""
    head = json.dumps(data, separators=(",", ":")).encode()
    fields = b",".join(json.dumps(key).encode() + b":" + value
                       for key, value in encoded.items())
    body = head[:-1] + (b"," if data and fields else b"") + fields + b"}"
    return Response(body, media_type="application/json")


def digest_list(body: dict[str, Any], key: str = "digests", limit: int = 100_000) -> list[str]:
    digests = body.get(key)
    if not isinstance(digests, list) or len(digests) > limit or not all(
            isinstance(d, str) and is_digest(d) for d in digests):
        raise InvalidRequestError(f"'{key}' must be a list of at most {limit} "
                                  f"sha256:<64 hex> digests")
    return digests


def string_field(body: dict[str, Any], key: str, *, required: bool = False,
                 limit: int = 1024) -> str | None:
    """``body[key]`` if it is a string of at most ``limit`` characters."""
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidRequestError(f"'{key}' must be a string of at most {limit} characters")
    return value
