"""The hub's FastAPI application and the ``serve`` entry point."""

from __future__ import annotations

import logging
import os
import sys
import time

from fastapi import FastAPI

from adapterhub.hub import errors
from adapterhub.hub.auth import AUTH_MODES
from adapterhub.hub.context import Hub
from adapterhub.hub.observe import Metrics, Observe
from adapterhub.hub.render import RenderCache


def create_app(db: str | os.PathLike[str] | None = None, *, auth: str = "required",
               render_cache_bytes: int = 1 << 30):
    """An ASGI application serving the registry at ``db`` (default: the user's registry).

    ``auth`` is ``required`` (every request needs a token; ``/health`` and ``/metrics`` are
    open) or ``read-public`` (anyone may read; writing needs a token).
    """
    from adapterhub.errors import RegistryError
    from adapterhub.hub import hf_read, hf_write, native, view
    from adapterhub.registry import Registry

    if auth not in AUTH_MODES:
        raise RegistryError(f"unknown auth mode {auth!r}; use one of {', '.join(AUTH_MODES)}")
    registry = Registry(db)
    metrics = Metrics()
    app = FastAPI(title="adapterhub", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.hub = Hub(registry=registry, auth=auth, renders=RenderCache(
        registry, render_cache_bytes), metrics=metrics, started=time.time())
    errors.install(app)
    for module in (native, hf_write, hf_read, view):  # hf_read's catch-all paths go last
        app.include_router(module.router)
    app.router.add_event_handler("shutdown", registry.close)
    return Observe(app, metrics)


def configure_logging() -> None:
    """Access log lines (already JSON) and other messages to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("adapterhub.hub.access", "adapterhub.hub"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve(db: str | None, *, host: str, port: int, auth: str) -> None:
    """Run the hub with uvicorn until interrupted."""
    import uvicorn

    configure_logging()
    app = create_app(db, auth=auth)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                lifespan="on", timeout_keep_alive=30)
