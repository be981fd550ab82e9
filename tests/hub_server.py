"""A real ``adapterhub serve`` (uvicorn) on 127.0.0.1 and a free port, in a thread."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn

from adapterhub.hub.app import create_app, server_config
from adapterhub.hub.context import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubServer:
    """``with HubServer(db) as hub: hub.url …`` — started and stopped with the block."""

    def __init__(self, db: str, *, auth: str = "required", port: int | None = None,
                 **settings) -> None:
        self.db = db
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(auth=auth, **settings)
        self.app = create_app(db, settings=self.settings)
        self.server = uvicorn.Server(server_config(self.app, host="127.0.0.1", port=self.port,
                                                   settings=self.settings))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> HubServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"the hub did not start on {self.url}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def hub(self):
        """The server's state (registry, metrics)."""
        return self.app.app.app.state.hub

    def token(self, *scopes: str, **kwargs) -> str:
        secret, _ = self.hub.registry.service.tokens.create(list(scopes or ["admin"]), **kwargs)
        return secret
