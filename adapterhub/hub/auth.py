"""Who is asking: the request's bearer token, turned into the store's :class:`Caller`.

``Authorization: Bearer <token>`` names a token from ``adapterhub token create`` (the same
header Hugging Face clients send with ``HF_TOKEN``). Without one, a request is anonymous:
refused everywhere under ``--auth required``, allowed to read under ``--auth read-public``.
The token is checked by :class:`~adapterhub.hub.guard.Guard` before any body is read; what
the caller may do is decided by the store (:mod:`registry_db.access`), not by the routes.
"""

from __future__ import annotations

from fastapi import Request

from adapterhub.errors import AuthenticationError
from adapterhub.hub.context import Hub, hub_of
from adapterhub.registry import Registry
from registry_db import Caller

CALLER_KEY = "caller"


def _secret(header: str) -> str:
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
    return secret.strip()


def authenticate(hub: Hub, header: str | None) -> Caller:
    """The caller an ``Authorization`` header names (anonymous without one); raises
    :class:`AuthenticationError` for a malformed header or an unknown, expired or revoked
    token."""
    public_read = hub.auth == "read-public"
    if not header:
        return Caller.anonymous(public_read=public_read)
    token = hub.registry.service.tokens.authenticate(_secret(header))
    return Caller.for_token(token, public_read=public_read)


def authenticate_cached(hub: Hub, header: str | None) -> Caller | None:
    """:func:`authenticate` when it needs no database (no header, or a token remembered for
    ``Settings.token_cache`` seconds), else None; so the event loop answers those without a
    thread hop."""
    public_read = hub.auth == "read-public"
    if not header:
        return Caller.anonymous(public_read=public_read)
    token = hub.registry.service.tokens.remembered(_secret(header))
    return None if token is None else Caller.for_token(token, public_read=public_read)


def caller(request: Request) -> Caller:
    """FastAPI dependency: the caller the guard authenticated for this request."""
    found = request.scope.get("state", {}).get(CALLER_KEY)
    if found is None:  # a route the guard lets through unauthenticated
        found = Caller.anonymous(public_read=hub_of(request).auth == "read-public")
    return found


def registry(request: Request) -> Registry:
    """FastAPI dependency: the hub's registry as the caller sees it."""
    return hub_of(request).registry.as_caller(caller(request))
