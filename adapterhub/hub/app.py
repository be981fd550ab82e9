"""The hub's FastAPI application, the server that runs it, and the ``serve`` entry point."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import time

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from adapterhub.errors import RegistryError
from adapterhub.hub import errors
from adapterhub.hub.auth import TokenCache
from adapterhub.hub.context import AUTH_MODES, HubState, Settings
from adapterhub.hub.guard import Guard
from adapterhub.hub.observe import Metrics, Observe
from adapterhub.hub.render import RenderCache
from adapterhub.registry import Registry

#: bytes of request line and headers a client may send (uvicorn's h11 limit)
MAX_HEADER_BYTES = 16 * 1024


def create_app(db: str | os.PathLike[str] | None = None, *,
               settings: Settings | None = None, render_cache_bytes: int = 1 << 30):
    """An ASGI application serving the registry at ``db`` (default: the user's registry)."""
    from adapterhub.hub import hf_api, hf_commit, hf_read, hf_write, hf_xet, native, pages, view
    from adapterhub.xet import XetStats

    settings = settings or Settings()
    if settings.auth not in AUTH_MODES:
        raise RegistryError(f"unknown auth mode {settings.auth!r}; use one of "
                            f"{', '.join(AUTH_MODES)}")
    registry = Registry(db)
    service = registry.service  # open (and migrate) the database now: a bad URL fails here
    metrics = Metrics()
    app = FastAPI(title="adapterhub", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    xet = hf_xet.xet_service(service)
    hub = HubState(registry=registry, settings=settings,
                   renders=RenderCache(render_cache_bytes), metrics=metrics,
                   tokens=TokenCache(settings.token_cache),
                   inline_reads=service.db.dialect == "sqlite", xet=xet, xet_stats=XetStats(),
                   started=time.time())
    app.state.hub = hub
    errors.install(app)
    app.include_router(hf_xet.xet_routes(registry.service, xet, hub.xet_stats))
    # the broad paths go last: hf_read's /{ns}/{name}/resolve/…, then the pages' /{ns}/{name}
    for module in (native, hf_api, hf_write, hf_commit, hf_read, view, pages):
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


def server_options(settings: Settings) -> dict:
    """The uvicorn options every hub runs with (``serve`` and the tests alike), but the
    application and the HTTP protocol class."""
    return {"log_level": "warning", "access_log": False, "lifespan": "on",
            "timeout_keep_alive": settings.keep_alive,
            "limit_concurrency": settings.max_concurrency,
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES}


def server_config(app, *, host: str, port: int, settings: Settings) -> uvicorn.Config:
    """The configuration of a one-process hub serving ``app``."""
    protocol = type("HubProtocol", (GuardedH11Protocol,),
                    {"header_timeout": settings.header_timeout})
    return uvicorn.Config(app, host=host, port=port, http=protocol, **server_options(settings))


#: what ``serve --workers`` hands each worker process: the registry and the settings (JSON)
SERVE_ENV = "ADAPTERHUB_SERVE"


def app_from_env():
    """uvicorn's application factory for ``serve --workers N``: each worker process builds
    its own application, with its own database engine, from :data:`SERVE_ENV`."""
    spec = json.loads(os.environ[SERVE_ENV])
    settings = Settings(**spec["settings"])
    GuardedH11Protocol.header_timeout = settings.header_timeout
    configure_logging()
    return create_app(spec["db"], settings=settings)


def configure_logging() -> None:
    """Access log lines (already JSON) and other messages to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("adapterhub.hub.access", "adapterhub.hub"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve(db: str | None, *, host: str, port: int, settings: Settings,
          workers: int = 1) -> None:
    """Run the hub with uvicorn until interrupted: one process, or ``workers`` processes
    sharing the listening socket (each with its own engine; the database is the only state
    they share)."""
    configure_logging()
    if workers == 1:
        app = create_app(db, settings=settings)
        uvicorn.Server(server_config(app, host=host, port=port, settings=settings)).run()
        return
    os.environ[SERVE_ENV] = json.dumps({"db": None if db is None else os.fspath(db),
                                        "settings": dataclasses.asdict(settings)})
    uvicorn.run("adapterhub.hub.app:app_from_env", factory=True, host=host, port=port,
                workers=workers, http="adapterhub.hub.app:GuardedH11Protocol",
                **server_options(settings))
