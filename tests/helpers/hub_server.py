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


class HubProcess:
    """``adapterhub serve`` in its own process (so its memory can be measured), over ``db``;
    extra CLI options (``--auth read-public``, ``--header-timeout 1``) pass through."""

    def __init__(self, db: str, *options: str, log_path=None) -> None:
        import subprocess
        import sys

        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adapterhub.cli", "serve", "--db", db, "--port",
             str(self.port), *options], stdout=self._log, stderr=subprocess.STDOUT)

    def start(self) -> HubProcess:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"adapterhub serve did not start on {self.url}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        if self.log_path:
            self._log.close()

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, who: str):
        """An httpx client of this hub with the token ``self.tokens[who]`` (set by the
        fixture that started it)."""
        import httpx

        return httpx.Client(base_url=self.url, timeout=60,
                            headers={"Authorization": f"Bearer {self.tokens[who]}"})

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")
