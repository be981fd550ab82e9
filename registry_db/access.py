"""Who is calling the store, and what they may do: scopes, tokens as callers, the local user.

Every call into :class:`~registry_db.service.RegistryService` carries a :class:`Caller`.
The local user (the Python API and the CLI on a registry they opened themselves) may do
anything: they hold the database. A hub's callers are a bearer token with scopes, or
anonymous (reading only, and only when the hub allows public reads).

A scope is ``LEVEL:PATTERN``: ``read`` < ``write`` < ``admin``, and the pattern (``fnmatch``,
``*`` by default) is matched against a repository's namespace, or against the whole
``ns/name`` when it contains a ``/``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from registry_db.clock import utcnow
from registry_db.errors import AuthenticationError, PermissionDeniedError, RefError

LEVELS = {"read": 1, "write": 2, "admin": 3}
SCOPE_RE = re.compile(r"^(read|write|admin)(?::([a-z0-9*?._\-\[\]]{1,64}"
                      r"(?:/[a-z0-9*?._\-\[\]]{1,64})?))?$")
LOCAL_OWNER = "local"


@dataclass(frozen=True)
class Scope:
    """``level`` on the repositories ``pattern`` matches."""

    level: str
    pattern: str = "*"

    def __str__(self) -> str:
        return f"{self.level}:{self.pattern}"

    def allows(self, level: str, name: str | None) -> bool:
        """Whether this scope grants ``level`` on repository ``name`` (``None``: on at least
        one repository, for requests that are not about one repository)."""
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
        raise RefError(f"invalid scope {str(text)[:80]!r}: use read, write or admin, "
                       f"optionally followed by :PATTERN",
                       hint="e.g. --scope read, --scope write:team-*, --scope admin:team/bot")
    return Scope(match.group(1), match.group(2) or "*")


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


@dataclass(frozen=True)
class Caller:
    """Who is asking. Build one with :meth:`local_user`, :meth:`for_token` or
    :meth:`anonymous`; the store decides every request from it."""

    token: TokenInfo | None = None
    local: bool = False
    public_read: bool = False
    user: str | None = None

    @classmethod
    def local_user(cls, user: str | None = None) -> Caller:
        """The person (or CI job) who opened the registry: every right, named ``user``."""
        return cls(local=True, user=user)

    @classmethod
    def for_token(cls, token: TokenInfo, *, public_read: bool = False) -> Caller:
        return cls(token=token, public_read=public_read)

    @classmethod
    def anonymous(cls, *, public_read: bool = False) -> Caller:
        return cls(public_read=public_read)

    def can(self, level: str, name: str | None = None) -> bool:
        """Whether the caller has ``level`` on repository ``name`` (``None``: on some)."""
        if self.local:
            return True
        if level == "read" and self.public_read:
            return True
        return self.token is not None and self.token.allows(level, name)

    def require(self, level: str, name: str | None = None) -> None:
        """Raise :class:`AuthenticationError` (nobody) or :class:`PermissionDeniedError` (a
        token without the scope) unless the caller has ``level`` on ``name``."""
        if self.can(level, name):
            return
        what = f"{level} access to {name}" if name else f"{level} access"
        needed = f"{level}:{name.partition('/')[0]}" if name else level
        if self.token is None:
            raise AuthenticationError(
                f"{what} needs a token",
                hint="Send 'Authorization: Bearer <token>' (adapterhub: set ADAPTERHUB_TOKEN "
                     "or run 'adapterhub login URL'; Hugging Face clients: HF_TOKEN)")
        scopes = ", ".join(str(s) for s in self.token.scopes)
        raise PermissionDeniedError(
            f"token {self.token.prefix}… ({scopes}) does not grant {what}",
            hint=f"Use a token with scope {needed} (adapterhub token create --scope {needed})")

    def require_all(self, level: str) -> None:
        """Like :meth:`require`, for work on the whole registry (gc, verify, the audit log):
        ``level`` on every repository, i.e. a scope with the pattern ``*``."""
        if self.local or (level == "read" and self.public_read):
            return
        what = f"{level} access to the whole registry"
        if self.token is None:
            raise AuthenticationError(f"{what} needs a token",
                                      hint="Send 'Authorization: Bearer <token>'")
        if not any(LEVELS[s.level] >= LEVELS[level] and s.pattern == "*"
                   for s in self.token.scopes):
            raise PermissionDeniedError(
                f"token {self.token.prefix}… does not grant {what}",
                hint=f"Use a token with scope {level} (adapterhub token create --scope {level})")

    @property
    def owner(self) -> str | None:
        """The key uploads and blob grants are recorded under (None: cannot write)."""
        if self.local:
            return LOCAL_OWNER
        return None if self.token is None else f"token:{self.token.id}"

    @property
    def actor(self) -> str | None:
        """How the audit log names the caller: the local user, or the token's name (else
        ``token-<id>``). Never anything the client sent."""
        if self.local:
            return self.user
        if self.token is None:
            return None
        return self.token.name or f"token-{self.token.id}"

    @property
    def token_id(self) -> int | None:
        return None if self.token is None else self.token.id
