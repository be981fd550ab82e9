"""CAS access tokens: what the ``xet-write-token`` route hands out and the CAS routes accept.

A :class:`Grant` says who may do what where: the caller (``subject``), the repository it was
issued for, the ``scope`` whose xorbs and files it may see and create, whether it may write,
and when it expires. A :class:`TokenSigner` turns a grant into an opaque bearer token and back;
the hub can plug in its own (signed with its key store, revocable, …). The default,
:class:`HmacTokenSigner`, needs only a secret:

    base64url(canonical JSON of the grant) "." base64url(HMAC-SHA256(secret, that text))
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

from adapterhub.errors import AuthenticationError

TOKEN_PREFIX = "xetcas."


@dataclass(frozen=True)
class Grant:
    """Permission to use the CAS for one repository until ``expires`` (unix seconds)."""

    subject: str
    repo: str
    scope: str
    write: bool
    expires: int


@runtime_checkable
class TokenSigner(Protocol):
    """Issues and checks CAS access tokens."""

    def issue(self, grant: Grant) -> str:
        """An opaque bearer token carrying ``grant``."""

    def verify(self, token: str) -> Grant:
        """The grant a token carries; AuthenticationError if it is forged, malformed or
        expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class HmacTokenSigner:
    """Tokens signed with HMAC-SHA256 under a server secret (at least 32 bytes)."""

    def __init__(self, secret: bytes, *, now: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ValueError("the CAS token secret needs at least 32 bytes")
        self._secret = secret
        self._now = now

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, grant: Grant) -> str:
        body = json.dumps(asdict(grant), sort_keys=True, separators=(",", ":"))
        payload = _b64(body.encode("utf-8"))
        return f"{TOKEN_PREFIX}{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> Grant:
        if not token.startswith(TOKEN_PREFIX) or token.count(".") != 2:
            raise AuthenticationError("the CAS access token is malformed",
                                      hint="Ask the hub's xet-write-token route for a new one")
        payload, signature = token[len(TOKEN_PREFIX):].split(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            raise AuthenticationError("the CAS access token's signature is not valid",
                                      hint="Ask the hub's xet-write-token route for a new one")
        try:
            fields = json.loads(_unb64(payload))
            grant = Grant(**fields)
        except (ValueError, TypeError, binascii.Error):
            raise AuthenticationError("the CAS access token is malformed") from None
        if grant.expires < self._now():
            raise AuthenticationError("the CAS access token has expired",
                                      hint="Ask the hub's xet-write-token route for a new one")
        return grant
