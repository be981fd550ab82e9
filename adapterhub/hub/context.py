"""The state a hub process holds: its registry, settings, render cache and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from adapterhub.hub.observe import Metrics
    from adapterhub.hub.render import RenderCache
    from adapterhub.registry import Registry

AUTH_MODES = ("required", "read-public")


@dataclass(frozen=True)
class Settings:
    """How a hub guards itself (see docs/security.md). Times are in seconds.

    ``auth``: ``required`` (every request needs a token but ``/health``) or ``read-public``
    (anyone may read; writing needs a token). ``header_timeout``: a client must send its
    request headers this fast; ``body_timeout``: the longest pause while a body arrives;
    ``keep_alive``: how long an idle connection stays open; ``max_concurrency``: connections
    and requests in flight per process before new ones get 503; ``token_cache``: how long a
    process remembers a valid token (a token revoked elsewhere, e.g. by ``adapterhub token
    revoke`` or another worker, stops working within this time; one revoked by this process
    at once); ``workers``: server processes (each opens its own database engine).
    """

    auth: str = "required"
    header_timeout: float = 10.0
    body_timeout: float = 20.0
    keep_alive: float = 5.0
    max_concurrency: int = 256
    token_cache: float = 5.0
    workers: int = 1


@dataclass
class Hub:
    registry: Registry
    settings: Settings
    renders: RenderCache
    metrics: Metrics
    started: float = field(default=0.0)
    #: when the database last answered /health (monotonic seconds)
    answered_at: float = field(default=float("-inf"))

    @property
    def auth(self) -> str:
        return self.settings.auth


def hub_of(request: Request) -> Hub:
    return request.app.state.hub
