"""Who is asking: the request's bearer token, turned into the store's :class:`Caller`.

``Authorization: Bearer <token>`` names a token from ``adapterhub token create`` (the same
header Hugging Face clients send with ``HF_TOKEN``). Without one, a request is anonymous:
refused everywhere under ``--auth required``, allowed to read under ``--auth read-public``.
The token is checked by :class:`~adapterhub.hub.guard.Guard` before any body is read; what
the caller may do is decided by the store (:mod:`registry_db.access`), not by the routes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from fastapi import Request

from adapterhub.errors import AuthenticationError
from adapterhub.hub.context import HubState, hub_of
from adapterhub.registry import Registry
from registry_db import Caller
from registry_db.access import TokenInfo
from registry_db.tokens import hash_secret

CALLER_KEY = "caller"


class TokenCache:
    """Tokens this process looked up in the last ``ttl`` seconds, by the hash of their
    secret, so that a busy client costs one database lookup per ``ttl``, not one per
    request. Expiry is still checked on every request; a revocation (written to the
    database by any replica) takes effect here within ``ttl``. Unknown tokens are never
    cached: a token created a moment ago works at once."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: OrderedDict[str, tuple[TokenInfo, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> TokenInfo | None:
        with self._lock:
            found = self._entries.get(digest)
            if found is None or time.monotonic() - found[1] > self.ttl:
                return None
            return found[0]

    def put(self, digest: str, token: TokenInfo) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[digest] = (token, time.monotonic())
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def _secret(header: str) -> str:
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
    return secret.strip()


def _caller(hub: HubState, token: TokenInfo) -> Caller:
    if token.state != "active":
        raise AuthenticationError(f"the token {token.prefix}… is {token.state}")
    return Caller.for_token(token, public_read=hub.auth == "read-public")


def cached_caller(hub: HubState, header: str | None) -> Caller | None:
    """:func:`authenticate` when it needs no database lookup (no header, or a token in the
    cache), else None. Cheap enough to run on the event loop."""
    if not header:
        return Caller.anonymous(public_read=hub.auth == "read-public")
    token = hub.tokens.get(hash_secret(_secret(header)))
    return None if token is None else _caller(hub, token)


def authenticate(hub: HubState, header: str | None) -> Caller:
    """The caller an ``Authorization`` header names (anonymous without one); raises
    :class:`AuthenticationError` for a malformed header or an unknown, expired or revoked
    token."""
    found = cached_caller(hub, header)
    if found is not None:
        return found
    secret = _secret(header or "")
    token = hub.registry.service.tokens.authenticate(secret)
    hub.tokens.put(hash_secret(secret), token)
    return _caller(hub, token)


def request_caller(request: Request) -> Caller:
    """The caller the guard authenticated for this request."""
    found = request.scope.get("state", {}).get(CALLER_KEY)
    if found is None:  # a route the guard lets through unauthenticated
        found = Caller.anonymous(public_read=hub_of(request).auth == "read-public")
    return found


def request_registry(request: Request) -> Registry:
    """The hub's registry as this request's caller sees it."""
    return hub_of(request).registry.as_caller(request_caller(request))


# FastAPI dependencies, ``async`` because they do no I/O: a plain ``def`` dependency costs a
# thread hop per request

async def caller(request: Request) -> Caller:
    """FastAPI dependency: :func:`request_caller`."""
    return request_caller(request)


async def registry(request: Request) -> Registry:
    """FastAPI dependency: :func:`request_registry`."""
    return request_registry(request)
