"""What the everyday commands import, read from Python's own import log
(``PYTHONPROFILEIMPORTTIME``) of the real command in a fresh process.

``push``, ``pull``, ``list``, ``show``, ``log``, ``tag`` and ``serve`` never import torch (CI
machines push adapters without it); ``list``, ``show`` and ``log`` on a SQLite registry do not
import SQLAlchemy either (its import alone would exceed their start-up budget).
"""

import os
import subprocess
import sys

import httpx
import pytest
import torch
from helpers.hub_server import HubProcess

from adapterhub.io.package import AdapterPackage


def imported(log: str) -> set[str]:
    """Top-level package names in an import-time log."""
    names = set()
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name.split(".")[0])
    return names


def command(*args: str, db, check: bool = True) -> set[str]:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "ADAPTERHUB_DB": str(db)}
    result = subprocess.run([sys.executable, "-m", "adapterhub.cli", *args], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return imported(result.stderr)


@pytest.fixture
def adapter(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"lin.lora_A": torch.randn(4, 16, generator=g),
               "lin.lora_B": torch.randn(16, 4, generator=g)}
    AdapterPackage.build("lora", {"r": 4, "lora_alpha": 8, "target_modules": ["lin"]}, tensors,
                         base_name="tiny").save(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_registry_commands_import_no_torch(tmp_path, adapter):
    db, other = tmp_path / "registry.db", tmp_path / "other.db"
    assert "torch" not in command("push", str(adapter), "team/bot", "-q", db=db)
    assert "torch" not in command("tag", "team/bot@1", "prod", db=db)
    assert "torch" not in command("pull", "team/bot:prod", "--from", str(db), "-q", db=other)
    for layout in ("native", "peft"):
        out = tmp_path / layout
        assert "torch" not in command("pull", "team/bot@1", "--out", str(out), "--format",
                                      layout, "-q", db=other)
        assert any(out.iterdir())
    for args in (["list"], ["list", "--json"], ["show", "team/bot"],
                 ["show", "team/bot@1", "--json"], ["log", "team/bot"]):
        modules = command(*args, db=other)
        assert "torch" not in modules, args
        assert "sqlalchemy" not in modules, args
        assert "adapterhub" in modules  # the log is read: a command that ran imports us


def test_pull_into_a_current_registry_imports_no_alembic_nor_numpy(tmp_path, adapter):
    db, other = tmp_path / "registry.db", tmp_path / "other.db"
    command("push", str(adapter), "team/bot", "-q", db=db)
    command("init", db=other)  # creates the schema (alembic runs here, not again)
    modules = command("pull", "team/bot@1", "--from", str(db), "-q", db=other)
    assert "alembic" not in modules  # the schema is current: no migration to run
    assert "numpy" not in modules  # small chunks join their byte planes without it


def test_serve_imports_no_torch(tmp_path, adapter, monkeypatch):
    db = tmp_path / "hub.db"
    command("push", str(adapter), "team/bot", "-q", db=db)
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    log = tmp_path / "serve.log"
    hub = HubProcess(str(db), "--auth", "read-public", log_path=log)
    with hub:
        for path in ("/health", "/api/v1/resolve?ref=team/bot", "/api/models/team/bot",
                     "/team/bot/resolve/main/adapter_model.safetensors",
                     "/team/bot/resolve/main/adapter_config.json", "/"):
            assert httpx.get(hub.url + path, timeout=30).status_code == 200, path
    modules = imported(log.read_text())
    assert "uvicorn" in modules
    assert "torch" not in modules
