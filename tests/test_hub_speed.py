"""What keeps the hub's request path short without weakening it: a token cache that honours
expiry at once (revocation within its bound: tests/test_hub_security.py), manifests parsed
once and spliced into answers as stored, and ``serve --workers N`` serving from N
processes."""

import json
import time
from datetime import timedelta
from pathlib import Path

import httpx
import torch
from helpers.hub_server import HubProcess, HubServer

from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry
from registry_db import RegistryService
from registry_db.clock import utcnow

CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["lin0"]}


def lora(seed=0):
    g = torch.Generator().manual_seed(seed)
    return AdapterPackage.build("lora", CONFIG, {
        "lin0.lora_A": torch.randn(4, 16, generator=g),
        "lin0.lora_B": torch.randn(16, 4, generator=g)}, base_name="tiny")


def test_token_cache_never_outlives_expiry(tmp_path):
    with HubServer(str(tmp_path / "hub.db"), token_cache=60) as server:
        secret = server.token("read", expires_at=utcnow() + timedelta(seconds=0.5))
        headers = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(f"{server.url}/api/v1/versions", headers=headers).status_code == 200
        time.sleep(0.6)
        r = httpx.get(f"{server.url}/api/v1/versions", headers=headers)
        assert r.status_code == 401 and "expired" in r.json()["error"]


def test_resolve_answers_the_version_with_its_stored_manifest(tmp_path):
    with HubServer(str(tmp_path / "hub.db")) as server:
        server.hub.registry.push(lora(), "team/bot", progress=False)
        headers = {"Authorization": f"Bearer {server.token('read:team')}"}
        for _ in range(2):  # parsed once, then from the cache: the same answer
            r = httpx.get(f"{server.url}/api/v1/resolve", params={"ref": "team/bot@1"},
                          headers=headers)
            expected = server.hub.registry.resolve("team/bot@1").to_dict(with_manifest=True)
            assert r.status_code == 200 and r.json() == expected


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_serve_with_workers_serves_push_and_pull(tmp_path, monkeypatch):
    db = str(tmp_path / "hub.db")
    with RegistryService(db) as service:
        token, _ = service.tokens.create(["write:team"])
    monkeypatch.setenv("ADAPTERHUB_TOKEN", token)
    with HubProcess(db, "--workers", "2") as hub:
        workers = [p for p in _children(hub.proc.pid)
                   if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2
        package = lora(1)
        with Registry(tmp_path / "local.db") as local:
            pushed = local.push(package, "team/bot", to=hub.url, progress=False)
        with Registry(tmp_path / "other.db") as other:
            assert other.pull("team/bot", hub.url, progress=False).digest == package.digest
        assert pushed.version.digest == package.digest
        for _ in range(8):  # every request, whichever worker takes it, sees the version
            r = httpx.get(f"{hub.url}/api/v1/resolve", params={"ref": "team/bot@1"},
                          headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and json.loads(r.content)["digest"] == package.digest
