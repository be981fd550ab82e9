"""API tokens for ``adapterhub serve``: scoped, expiring, stored only as a sha256 hash.

A token is ``ahub_`` plus 43 URL-safe characters (256 random bits), so a sha256 of it cannot
be reversed or guessed; the database keeps the hash and the first characters (to tell tokens
apart in listings). Scopes are described in :mod:`registry_db.access`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import datetime

from sqlalchemy import select

from registry_db.access import TokenInfo, parse_scope
from registry_db.clock import utcnow
from registry_db.database import Database
from registry_db.errors import (AdapterNotFoundError, AuthenticationError, ConflictError,
                                InvalidRequestError)
from registry_db.models import Token

__all__ = ["PREFIX", "TokenStore", "hash_secret", "parse_scope"]

PREFIX = "ahub_"
SHOWN = 12  # characters of the secret kept for listings
MAX_ID = 2**31 - 1  # row ids are 32-bit integers on every backend


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _info(row: Token) -> TokenInfo:
    return TokenInfo(row.id, row.name, row.prefix,
                     tuple(parse_scope(s) for s in json.loads(row.scopes)), row.created_at,
                     row.expires_at, row.revoked_at)


class TokenStore:
    """The tokens of one registry database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, scopes: list[str], *, name: str | None = None,
               expires_at: datetime | None = None) -> tuple[str, TokenInfo]:
        """A new token: ``(secret, info)``. The secret is shown once and never stored."""
        parsed = [parse_scope(s) for s in scopes]
        if not parsed:
            raise InvalidRequestError("a token needs at least one scope",
                                      hint="e.g. --scope read, --scope write:team-*")
        if name is not None and (len(name) > 128 or not name.isprintable()):
            raise InvalidRequestError("a token name is at most 128 printable characters")
        secret = PREFIX + secrets.token_urlsafe(32)
        with self.db.write() as s:
            row = Token(name=name, token_hash=hash_secret(secret), prefix=secret[:SHOWN],
                        scopes=json.dumps([str(p) for p in parsed]), created_at=utcnow(),
                        expires_at=expires_at, revoked_at=None)
            s.add(row)
            s.flush()
            return secret, _info(row)

    def authenticate(self, secret: str) -> TokenInfo:
        """The active token whose secret this is; :class:`AuthenticationError` otherwise."""
        digest = hash_secret(secret)
        with self.db.read() as s:
            row = s.scalar(select(Token).where(Token.token_hash == digest))
        # the lookup is by hash, so timing reveals nothing of the secret; compare anyway
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            raise AuthenticationError("the token is not valid for this hub")
        info = _info(row)
        if info.state != "active":
            raise AuthenticationError(f"the token {info.prefix}… is {info.state}")
        return info

    def list(self) -> list[TokenInfo]:
        with self.db.read() as s:
            return [_info(row) for row in s.scalars(select(Token).order_by(Token.id))]

    def revoke(self, key: str) -> TokenInfo:
        """Revoke the token with this id or secret prefix (as ``token list`` shows it)."""
        with self.db.write() as s:
            query = select(Token)
            if key.isdigit() and int(key) <= MAX_ID:
                query = query.where(Token.id == int(key))
            else:
                query = query.where(Token.prefix.startswith(key.removesuffix("…"),
                                                            autoescape=True))
            rows = list(s.scalars(query.limit(2)))
            if not rows:
                raise AdapterNotFoundError(f"no token {key!r}",
                                           hint="See them with: adapterhub token list")
            if len(rows) > 1:
                raise ConflictError(f"{key!r} matches several tokens; give its id")
            row = rows[0]
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _info(row)

    # -- signed URLs ------------------------------------------------------------------------

    def _key(self, token_id: int) -> tuple[Token, bytes]:
        with self.db.read() as s:
            row = s.get(Token, token_id) if 0 < token_id <= MAX_ID else None
        if row is None:
            raise AuthenticationError("the signed URL names no token of this hub")
        return row, bytes.fromhex(row.token_hash)

    def sign(self, token_id: int, message: str) -> str:
        """An HMAC of ``message`` keyed by the token (for URLs that carry no header, such as
        the upload URLs a Hugging Face client PUTs to). Revoking the token voids them."""
        _, key = self._key(token_id)
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def check_signature(self, token_id: int, message: str, signature: str) -> TokenInfo:
        """The token that signed ``message``, if it is still active; AuthenticationError
        otherwise."""
        row, key = self._key(token_id)
        expected = hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise AuthenticationError("the URL's signature is not valid")
        info = _info(row)
        if info.state != "active":
            raise AuthenticationError(f"the token {info.prefix}… that signed this URL is "
                                      f"{info.state}")
        return info
