"""A test-only Hugging Face-style hub on a real uvicorn server that mounts the Xet router.

It has the least the stock ``huggingface_hub`` client needs to upload a file: ``preupload``
(every ``.safetensors`` goes as LFS, hence through Xet), the Xet routes, and ``commit``, which
resolves each ``lfsFile`` by its sha256 through the Xet service. Commits are kept in memory.
Tokens: ``hf_alice`` writes to namespace ``team``, ``hf_bob`` to ``other``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from adapterhub.errors import AuthenticationError, PermissionDeniedError
from adapterhub.xet.routes import Caller, RepoRef, XetStats, xet_router
from adapterhub.xet.service import XetLimits, XetService
from adapterhub.xet.storage import MemoryXetStorage
from adapterhub.xet.tokens import HmacTokenSigner

USERS = {"hf_alice": ("alice", "team"), "hf_bob": ("bob", "other")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def authorize(request: Request, repo: RepoRef) -> Caller:
    user = USERS.get(bearer(request))
    if user is None:
        raise AuthenticationError("unknown or missing token")
    if repo.namespace != user[1] or repo.repo_type != "model":
        raise PermissionDeniedError(f"{user[0]} cannot write to {repo.id}")
    return Caller(subject=user[0], scope=user[1])


@dataclass
class Commit:
    repo: str
    files: dict[str, str] = field(default_factory=dict)  # path → sha256


def make_app(service: XetService, signer: HmacTokenSigner, stats: XetStats,
             commits: list[Commit]) -> FastAPI:
    app = FastAPI()
    app.include_router(xet_router(service, authorize, signer, stats=stats))

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/api/models/{namespace}/{name}/preupload/{revision}")
    async def preupload(request: Request, namespace: str, name: str, revision: str) -> dict:
        body = await request.json()
        return {"files": [{"path": f["path"], "shouldIgnore": False,
                           "uploadMode": "lfs" if f["path"].endswith(".safetensors")
                           else "regular"} for f in body["files"]]}

    @app.post("/api/models/{namespace}/{name}/commit/{revision}")
    async def commit(request: Request, namespace: str, name: str, revision: str):
        user = USERS.get(bearer(request))
        if user is None or user[1] != namespace:
            return JSONResponse({"error": "not allowed"}, status_code=403)
        record = Commit(f"{namespace}/{name}")
        for line in (await request.body()).splitlines():
            item = json.loads(line)
            if item["key"] != "lfsFile":
                continue
            value = item["value"]
            entry = service.file_by_sha256(value["oid"], user[1])
            if entry is None or entry.size != value["size"]:
                return JSONResponse({"error": f"{value['path']} was not uploaded"},
                                    status_code=422)
            record.files[value["path"]] = value["oid"]
        commits.append(record)
        oid = hashlib.sha1(json.dumps(record.files, sort_keys=True).encode()).hexdigest()
        base = str(request.base_url).rstrip("/")
        return {"commitUrl": f"{base}/{namespace}/{name}/commit/{oid}", "commitOid": oid,
                "pullRequestUrl": None}

    return app


class XetTestHub:
    """``with XetTestHub() as hub: hub.url …`` — a real server, stopped with the block."""

    def __init__(self, limits: XetLimits | None = None) -> None:
        self.storage = MemoryXetStorage()
        self.service = XetService(self.storage, limits)
        self.signer = HmacTokenSigner(secrets.token_bytes(32))
        self.stats = XetStats()
        self.commits: list[Commit] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cas = f"{self.url}/xet-cas"
        app = make_app(self.service, self.signer, self.stats, self.commits)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> XetTestHub:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"the test hub did not start on {self.url}")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def cas_token(self, user: str = "hf_alice", repo: str = "team/up") -> str:
        """A CAS access token, fetched through the token route like hf_xet does."""
        r = httpx.get(f"{self.url}/api/models/{repo}/xet-write-token/main",
                      headers={"authorization": f"Bearer {user}"}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert body["casUrl"] == self.cas
        return body["accessToken"]
