"""``adapterhub serve --workers N``: N server processes on one socket, each with its own
engine, serving the same registry (SQLite and PostgreSQL)."""

import time
from pathlib import Path

import httpx
from helpers.hub_server import HubProcess
from helpers.registry_helpers import push_raw, tensor_bytes

from registry_db import RegistryService


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_workers_serve_one_registry(registry_url):
    with RegistryService(registry_url) as service:
        pushed = push_raw(service, "team/bot", {"w": tensor_bytes(1)}).version
        token, _ = service.tokens.create(["read:team"])
    with HubProcess(registry_url, "--workers", "2") as hub:
        workers = children(hub.proc.pid)
        assert len(workers) >= 2, workers  # uvicorn's supervisor and its worker processes
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=hub.url, headers=headers) as client:
            for _ in range(20):  # new connections, spread over the workers
                answer = client.get("/api/v1/resolve", params={"ref": "team/bot"},
                                    headers={"Connection": "close"})
                assert answer.status_code == 200
                assert answer.json()["digest"] == pushed.digest
                assert answer.json()["manifest"]["tensors"]["w"]["digest"]
            with RegistryService(registry_url) as service:  # a write any worker must see
                push_raw(service, "team/bot", {"w": tensor_bytes(2)})
            assert client.get("/api/v1/resolve", params={"ref": "team/bot"}).json()[
                "number"] == 2
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in workers):  # stopping the server stops its workers
        assert time.monotonic() < deadline, [pid for pid in workers if running(pid)]
        time.sleep(0.1)


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited child nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
