"""The state a hub process holds: its registry, settings, render cache and metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:
    from adapterhub.hub.auth import TokenCache
    from adapterhub.hub.observe import Metrics
    from adapterhub.hub.render import RenderCache
    from adapterhub.registry import Registry
    from adapterhub.xet import XetService, XetStats

AUTH_MODES = ("required", "read-public")
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """How a hub guards itself (see docs/security.md). Times are in seconds.

    ``auth``: ``required`` (every request needs a token but ``/health``) or ``read-public``
    (anyone may read; writing needs a token). ``header_timeout``: a client must send its
    request headers this fast; ``body_timeout``: the longest pause while a body arrives;
    ``keep_alive``: how long an idle connection stays open; ``max_concurrency``: connections
    and requests in flight per process before new ones get 503; ``token_cache``: how long a
    process trusts a token it has looked up (a revoked token stops working within this time;
    0 looks every request up).
    """

    auth: str = "required"
    header_timeout: float = 10.0
    body_timeout: float = 20.0
    keep_alive: float = 5.0
    max_concurrency: int = 256
    token_cache: float = 5.0


@dataclass
class HubState:
    """What one hub process holds beside its settings: the registry it serves, caches
    (rendered files, tokens), counters and the Xet service (``app.state.hub``)."""

    registry: Registry
    settings: Settings
    renders: RenderCache
    metrics: Metrics
    tokens: TokenCache
    xet: XetService
    xet_stats: XetStats
    #: small reads run on the event loop (SQLite: microseconds, less than a thread hop);
    #: on PostgreSQL, a network round trip, they go to worker threads
    inline_reads: bool = False
    started: float = field(default=0.0)
    #: until when (monotonic seconds) /health may answer without asking the database again
    healthy_until: float = field(default=0.0)

    @property
    def auth(self) -> str:
        return self.settings.auth


def hub_of(request: Request) -> HubState:
    return request.app.state.hub


async def small_read(request: Request, read: Callable[..., T], *args: Any) -> T:
    """``read(*args)``, a bounded read of the store (a ref, a repository's name), on the
    event loop or in a worker thread as :attr:`HubState.inline_reads` says."""
    if hub_of(request).inline_reads:
        return read(*args)
    return await run_in_threadpool(read, *args)
