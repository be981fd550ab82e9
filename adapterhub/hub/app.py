"""The hub's FastAPI application, the server that runs it, and the ``serve`` entry point."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import asdict

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from adapterhub.errors import RegistryError
from adapterhub.hub import errors
from adapterhub.hub.context import AUTH_MODES, Hub, Settings
from adapterhub.hub.guard import Guard
from adapterhub.hub.observe import Metrics, Observe
from adapterhub.hub.render import RenderCache
from adapterhub.registry import Registry

#: bytes of request line and headers a client may send (uvicorn's h11 limit)
MAX_HEADER_BYTES = 16 * 1024


def create_app(db: str | os.PathLike[str] | None = None, *,
               settings: Settings | None = None, render_cache_bytes: int = 1 << 30):
    """An ASGI application serving the registry at ``db`` (default: the user's registry)."""
    from adapterhub.hub import hf_read, hf_write, native, pages, view

    settings = settings or Settings()
    if settings.auth not in AUTH_MODES:
        raise RegistryError(f"unknown auth mode {settings.auth!r}; use one of "
                            f"{', '.join(AUTH_MODES)}")
    registry = Registry(db)
    registry.service.tokens.cache_ttl = settings.token_cache
    metrics = Metrics()
    app = FastAPI(title="adapterhub", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    hub = Hub(registry=registry, settings=settings,
              renders=RenderCache(render_cache_bytes), metrics=metrics, started=time.time())
    app.state.hub = hub
    errors.install(app)
    # the broad paths go last: hf_read's /{ns}/{name}/resolve/…, then the pages' /{ns}/{name}
    for module in (native, hf_write, hf_read, view, pages):
        app.include_router(module.router)
    app.router.add_event_handler("shutdown", registry.close)
    app.router.add_event_handler("shutdown", hub.renders.close)
    return Observe(Guard(app, hub), metrics)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a header timeout: a connection must deliver a whole
    request head within ``header_timeout`` seconds of opening or of its previous response,
    or it is closed (uvicorn's own keep-alive timer stops at the first byte, so a client that
    trickles a header byte at a time would otherwise hold the connection for ever)."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)
        elif not waiting:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app, *, host: str, port: int, settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration every hub runs with (``serve`` and the tests alike).

    With ``settings.workers`` > 1, ``app`` is the import string of a factory (uvicorn starts
    that many processes, each building its own application)."""
    protocol = type("HubProtocol", (GuardedH11Protocol,),
                    {"header_timeout": settings.header_timeout})
    if settings.workers > 1:  # a worker imports the protocol by name; it reads its timeout
        protocol = GuardedH11Protocol  # from the environment (see worker_app)
    return uvicorn.Config(app, host=host, port=port, http=protocol, log_level="warning",
                          access_log=False, lifespan="on",
                          timeout_keep_alive=settings.keep_alive,
                          limit_concurrency=settings.max_concurrency,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          workers=settings.workers, factory=settings.workers > 1)


def configure_logging() -> None:
    """Access log lines (already JSON) and other messages to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("adapterhub.hub.access", "adapterhub.hub"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


#: how ``serve`` hands the registry and settings to worker processes
WORKER_ENV = "ADAPTERHUB_SERVE_WORKER"


def worker_app():
    """uvicorn factory for one worker process of ``serve --workers N``: the registry and
    settings ``serve`` put in :data:`WORKER_ENV`; the worker opens its own engine."""
    spec = json.loads(os.environ[WORKER_ENV])
    settings = Settings(**spec["settings"])
    GuardedH11Protocol.header_timeout = settings.header_timeout
    configure_logging()
    return create_app(spec["db"], settings=settings)


def serve(db: str | None, *, host: str, port: int, settings: Settings) -> None:
    """Run the hub with uvicorn until interrupted (``settings.workers`` processes)."""
    configure_logging()
    if settings.workers == 1:
        app = create_app(db, settings=settings)
        uvicorn.Server(server_config(app, host=host, port=port, settings=settings)).run()
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[WORKER_ENV] = json.dumps({"db": db, "settings": asdict(settings)})
    config = server_config("adapterhub.hub.app:worker_app", host=host, port=port,
                           settings=settings)
    sock = config.bind_socket()
    Multiprocess(config, sockets=[sock]).run()
