"""Bearer tokens on every route: who is asking, and may they?

``Authorization: Bearer <token>`` names a token from ``adapterhub token create`` (the same
header Hugging Face clients send with ``HF_TOKEN``). Without one, a request is anonymous:
refused everywhere under ``--auth required``, allowed to read under ``--auth read-public``.
Writes always need a token whose scopes cover the repository.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from adapterhub.hub.context import hub_of
from adapterhub.hub.errors import HubError
from registry_db.tokens import TokenError, TokenInfo

AUTH_MODES = ("required", "read-public")


@dataclass(frozen=True)
class Principal:
    """The caller: a token, or nobody (``token`` is None)."""

    token: TokenInfo | None
    public_read: bool

    def can(self, level: str, name: str | None = None) -> bool:
        if level == "read" and self.public_read:
            return True
        return self.token is not None and self.token.allows(level, name)

    def require(self, level: str, name: str | None = None) -> None:
        """Raise 401 (no token) or 403 (token without the scope) unless allowed."""
        if self.can(level, name):
            return
        what = f"{level} access to {name}" if name else f"{level} access"
        needed = f"{level}:{name.partition('/')[0]}" if name else level
        if self.token is None:
            raise HubError(401, f"{what} needs a token", code="Unauthorized",
                           hint="Send 'Authorization: Bearer <token>' (adapterhub: set "
                                "ADAPTERHUB_TOKEN or run 'adapterhub login URL'; Hugging Face "
                                "clients: HF_TOKEN)")
        scopes = ", ".join(str(s) for s in self.token.scopes)
        raise HubError(403, f"token {self.token.prefix}… ({scopes}) does not grant {what}",
                       code="Forbidden",
                       hint=f"Use a token with scope {needed} (adapterhub token create "
                            f"--scope {needed})")

    @property
    def actor(self) -> str | None:
        """How the audit log names the caller."""
        if self.token is None:
            return None
        return self.token.name or f"token-{self.token.id}"


def principal(request: Request) -> Principal:
    """FastAPI dependency: authenticate the request's bearer token (once per request)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    hub = hub_of(request)
    header = request.headers.get("authorization")
    token = None
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise HubError(401, "the Authorization header must be 'Bearer <token>'")
        try:
            token = hub.registry.service.tokens.authenticate(secret.strip())
        except TokenError as exc:
            raise HubError(401, exc.message, code="Unauthorized", hint=exc.hint) from None
    found = Principal(token, public_read=hub.auth == "read-public")
    request.state.principal = found
    request.state.token_id = token.id if token else None
    return found
