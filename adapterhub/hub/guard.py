"""The guard every request passes before the application sees it: auth before work.

:class:`Guard` is an ASGI middleware. For each request it

1. authenticates the bearer token (a database lookup by hash, remembered for
   ``Settings.token_cache`` seconds) and refuses a request that needs one (401) or a write
   from a token without any write scope (403) **before any of the body is read**: an
   unauthenticated 16 MiB body costs the hub nothing;
2. enforces the route's body limit: 413 before reading when ``Content-Length`` is too large,
   and while streaming when a body without one grows past it;
3. stops waiting for a body that pauses longer than ``body_timeout`` (408).

Header timeouts and the concurrency limit are the server's (see :mod:`adapterhub.hub.app`).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.concurrency import run_in_threadpool

from adapterhub.errors import (AdapterHubError, InvalidRequestError, LimitExceededError,
                               RequestTimeoutError)
from adapterhub.hub.auth import CALLER_KEY, authenticate, cached_caller
from adapterhub.hub.context import HubState
from adapterhub.hub.errors import error_response
from adapterhub.xet import XetLimits
from registry_db.codec import CHUNK_SIZE
from registry_db.manifest import MAX_MANIFEST_BYTES

MiB = 1 << 20
#: largest file a Hugging Face client may upload (one LFS object)
MAX_FILE = 16 * 1024 * MiB
#: a native commit (a manifest is at most 16 MiB, plus a message)
COMMIT_LIMIT = MAX_MANIFEST_BYTES + 128 * 1024
#: a Hugging Face NDJSON commit (small files inline, base64: a manifest grows by a third)
HF_COMMIT_LIMIT = 24 * MiB
#: digest lists (a version has at most 100,000 tensors)
NEGOTIATE_LIMIT = 8 * MiB
BUNDLE_LIMIT = 64 * MiB
#: any other body
DEFAULT_LIMIT = 1 * MiB

_LIMITS = [
    ("PUT", re.compile(r"^/api/v1/uploads/[^/]+/chunks/[^/]+$"), CHUNK_SIZE),
    ("POST", re.compile(r"^/api/v1/blobs$"), BUNDLE_LIMIT),
    ("PUT", re.compile(r"^/api/hub/lfs/"), MAX_FILE),
    ("POST", re.compile(r"^/api/v1/repos/[^/]+/[^/]+/commit$"), COMMIT_LIMIT),
    ("POST", re.compile(r"^/api/models/[^/]+/[^/]+/commit/"), HF_COMMIT_LIMIT),
    ("POST", re.compile(r"^/api/v1/(blobs/missing|repos/[^/]+/[^/]+/blobs/(read|stored|urls))$"),
     NEGOTIATE_LIMIT),
    ("POST", re.compile(r"^/xet-cas/v1/xorbs/"), XetLimits.max_xorb_bytes),
    ("POST", re.compile(r"^/xet-cas/v[12]/shards$"), XetLimits.max_shard_bytes),
]
#: routes that need no hub token (the signed LFS upload URL authenticates itself; the Xet CAS
#: routes check their own CAS token before reading a body; validating a model card reads
#: nothing of the registry)
_OPEN = re.compile(r"^/api/hub/lfs/|^/xet-cas/|^/api/validate-yaml$")
#: routes that do not look at the token at all
_ANONYMOUS = re.compile(r"^/health$")
#: POST routes that only read, so anonymous callers may use them under --auth read-public
_READ_POSTS = re.compile(r"^/api/v1/repos/[^/]+/[^/]+/blobs/(read|stored|urls)$")
_READ_METHODS = ("GET", "HEAD")


def body_limit(method: str, path: str) -> int:
    for verb, pattern, limit in _LIMITS:
        if method == verb and pattern.match(path):
            return limit
    return DEFAULT_LIMIT


def _too_large(limit: int) -> LimitExceededError:
    return LimitExceededError(f"the request body is larger than this route's limit of {limit} "
                              f"bytes", hint="Send large blobs as a chunked upload "
                                             "(adapterhub push does)")


def _content_length(scope: dict) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 20 else -1
    return None


def _authorization(scope: dict) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            return value.decode("latin-1")
    return None


class Guard:
    """ASGI middleware: authentication before work, body limits and body timeouts."""

    def __init__(self, app: Any, hub: HubState) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit = body_limit(method, path)
        try:
            declared = _content_length(scope)
            if declared == -1:
                raise InvalidRequestError("invalid Content-Length header")
            caller = await self._admit(scope, method, path)
            if declared is not None and declared > limit:
                raise _too_large(limit)
        except AdapterHubError as exc:
            scope.setdefault("state", {})["handler"] = "guard"
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_KEY] = caller
        received = 0
        complete = False
        timeout = self.hub.settings.body_timeout

        async def guarded_receive() -> dict:
            nonlocal received, complete
            if complete:  # only the disconnect is left to wait for: a streamed response
                return await receive()  # (Xet's /v2/shards) may take longer than the timeout
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeoutError(f"the request body stalled for {timeout:g} s; "
                                          f"the hub stopped waiting") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, send)

    async def _admit(self, scope: dict, method: str, path: str):
        """The caller, or an error that refuses the request before its body is read."""
        if _ANONYMOUS.match(path):
            return cached_caller(self.hub, None)
        if _OPEN.match(path):
            try:
                return await self._authenticate(_authorization(scope))
            except AdapterHubError:  # these routes do not depend on who asks
                return cached_caller(self.hub, None)
        caller = await self._authenticate(_authorization(scope))
        reads = method in _READ_METHODS or (method == "POST" and _READ_POSTS.match(path))
        if reads:
            caller.require("read")
        else:
            caller.require("write")
        return caller

    async def _authenticate(self, header: str | None):
        """On the event loop when the token is cached; a database lookup in a worker
        thread otherwise."""
        return cached_caller(self.hub, header) or await run_in_threadpool(
            authenticate, self.hub, header)
