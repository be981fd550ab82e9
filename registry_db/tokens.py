"""API tokens for ``adapterhub serve``: scoped, expiring, stored only as a sha256 hash.

A token is ``ahub_`` plus 43 URL-safe characters (256 random bits), so a sha256 of it cannot
be reversed or guessed; the database keeps the hash and the first characters (to tell tokens
apart in listings). A scope is ``LEVEL:PATTERN``: ``read`` < ``write`` < ``admin``, and the
pattern (``fnmatch``, ``*`` by default) is matched against a repository's namespace, or
against the whole ``ns/name`` when it contains a ``/``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from registry_db.database import Database, utcnow
from registry_db.errors import InvalidNameError, NotFoundError, RegistryDBError
from registry_db.models import Token

PREFIX = "ahub_"
LEVELS = {"read": 1, "write": 2, "admin": 3}
SCOPE_RE = re.compile(r"^(read|write|admin)(?::([a-z0-9*?._\-\[\]]{1,64}"
                      r"(?:/[a-z0-9*?._\-\[\]]{1,64})?))?$")
SHOWN = 12  # characters of the secret kept for listings


class TokenError(RegistryDBError):
    """A bearer token is unknown, revoked or expired."""

    default_hint = "Create a new one with: adapterhub token create --scope read:NAMESPACE"


@dataclass(frozen=True)
class Scope:
    """``level`` on the repositories ``pattern`` matches."""

    level: str
    pattern: str = "*"

    def __str__(self) -> str:
        return f"{self.level}:{self.pattern}"

    def allows(self, level: str, name: str | None) -> bool:
        """Whether this scope grants ``level`` on repository ``name`` (``None``: on at least
        one repository, for routes that are not about one repository)."""
        if LEVELS[self.level] < LEVELS[level]:
            return False
        if name is None:
            return True
        target = name if "/" in self.pattern else name.partition("/")[0]
        return fnmatch.fnmatchcase(target, self.pattern)


def parse_scope(text: str) -> Scope:
    """``write:team-*`` → ``Scope("write", "team-*")``; a bare level means every repository."""
    match = SCOPE_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or ".." in text:
        raise InvalidNameError(f"invalid scope {str(text)[:80]!r}: use read, write or admin, "
                               f"optionally followed by :PATTERN",
                               hint="e.g. --scope read, --scope write:team-*, "
                                    "--scope admin:team/bot")
    return Scope(match.group(1), match.group(2) or "*")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """A stored token (never its secret)."""

    id: int
    name: str | None
    prefix: str
    scopes: tuple[Scope, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def allows(self, level: str, name: str | None = None) -> bool:
        return any(scope.allows(level, name) for scope in self.scopes)

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "prefix": self.prefix,
                "scopes": [str(s) for s in self.scopes], "state": self.state,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at and self.expires_at.isoformat(),
                "revoked_at": self.revoked_at and self.revoked_at.isoformat()}


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
            raise InvalidNameError("a token needs at least one scope",
                                   hint="e.g. --scope read, --scope write:team-*")
        if name is not None and len(name) > 128:
            raise InvalidNameError("a token name is at most 128 characters")
        secret = PREFIX + secrets.token_urlsafe(32)
        with self.db.write() as s:
            row = Token(name=name, token_hash=hash_secret(secret), prefix=secret[:SHOWN],
                        scopes=json.dumps([str(p) for p in parsed]), created_at=utcnow(),
                        expires_at=expires_at, revoked_at=None)
            s.add(row)
            s.flush()
            return secret, _info(row)

    def authenticate(self, secret: str) -> TokenInfo:
        """The active token whose secret this is; :class:`TokenError` otherwise."""
        digest = hash_secret(secret)
        with self.db.read() as s:
            row = s.scalar(select(Token).where(Token.token_hash == digest))
        # the lookup is by hash, so timing reveals nothing of the secret; compare anyway
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            raise TokenError("the token is not valid for this hub")
        info = _info(row)
        if info.state != "active":
            raise TokenError(f"the token {info.prefix}… is {info.state}")
        return info

    def list(self) -> list[TokenInfo]:
        with self.db.read() as s:
            return [_info(row) for row in s.scalars(select(Token).order_by(Token.id))]

    def revoke(self, key: str) -> TokenInfo:
        """Revoke the token with this id or secret prefix (as ``token list`` shows it)."""
        with self.db.write() as s:
            query = select(Token)
            if key.isdigit():
                query = query.where(Token.id == int(key))
            else:
                query = query.where(Token.prefix.startswith(key.removesuffix("…"),
                                                            autoescape=True))
            rows = list(s.scalars(query.limit(2)))
            if not rows:
                raise NotFoundError(f"no token {key!r}",
                                    hint="See them with: adapterhub token list")
            if len(rows) > 1:
                raise InvalidNameError(f"{key!r} matches several tokens; give its id")
            row = rows[0]
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _info(row)

    # -- signed URLs ------------------------------------------------------------------------

    def _key(self, token_id: int) -> tuple[Token, bytes]:
        with self.db.read() as s:
            row = s.get(Token, token_id)
        if row is None:
            raise TokenError("the signed URL names no token of this hub")
        return row, bytes.fromhex(row.token_hash)

    def sign(self, token_id: int, message: str) -> str:
        """An HMAC of ``message`` keyed by the token (for URLs that carry no header, such as
        the upload URLs a Hugging Face client PUTs to). Revoking the token voids them."""
        _, key = self._key(token_id)
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def check_signature(self, token_id: int, message: str, signature: str) -> TokenInfo:
        """The token that signed ``message``, if it is still active; TokenError otherwise."""
        row, key = self._key(token_id)
        expected = hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise TokenError("the URL's signature is not valid")
        info = _info(row)
        if info.state != "active":
            raise TokenError(f"the token {info.prefix}… that signed this URL is {info.state}")
        return info
