"""``list/log/show/tag/rm/gc/verify --from URL|REMOTE``: the same commands, output and ``--json``
against a hub over HTTP as against the registry file itself; the token's scopes decide what
each shows or may do."""

import json

import pytest
import torch
from helpers.hub_server import HubServer

from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry


def lora(seed: int) -> AdapterPackage:
    g = torch.Generator().manual_seed(seed)
    tensors = {"lin0.lora_A": torch.randn(2, 8, generator=g),
               "lin0.lora_B": torch.randn(8, 2, generator=g)}
    return AdapterPackage.build("lora", {"r": 2, "lora_alpha": 4, "target_modules": ["lin0"]},
                                tensors, base_name="tiny")


@pytest.fixture
def hub(tmp_path):
    db = str(tmp_path / "hub.db")
    with Registry(db) as reg:
        reg.push(lora(0), "team/bot", message="first", progress=False)
        reg.push(lora(1), "team/bot", message="second", tags=["prod"], progress=False)
        reg.push(lora(2), "other/secret", progress=False)
    with HubServer(db) as server:
        server.db_path = db
        yield server


def as_json(run, *args):
    return json.loads(run(*args, "--json").stdout)


def test_reads_match_the_registry_file(hub, run, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_TOKEN", hub.token("admin"))
    local, remote = ["--db", hub.db_path], ["--from", hub.url]
    for args in (["list"], ["list", "team/"], ["log", "team/bot"], ["show", "team/bot:prod"]):
        assert as_json(run, *args, *remote) == as_json(run, *args, *local), args
        assert run(*args, *remote).stdout == run(*args, *local).stdout, args
    run("remote", "add", "hub", hub.url)
    assert as_json(run, "list", "--from", "hub") == as_json(run, "list", *local)


def test_writes_and_maintenance_over_http(hub, run, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_TOKEN", hub.token("admin"))
    remote = ["--from", hub.url]
    moved = as_json(run, "tag", "team/bot@1", "candidate", *remote)
    assert moved["ref"] == "team/bot@1" and "candidate" in moved["tags"]
    assert as_json(run, "tag", "--delete", "team/bot:candidate", *remote)["ref"] == "team/bot@1"
    assert as_json(run, "rm", "team/bot:prod", *remote)["deleted"] is True
    report = as_json(run, "gc", "--grace", "0", *remote)
    assert report["purged"] == ["team/bot@2"] and report["blobs_removed"] == 2
    assert as_json(run, "verify", *remote)["ok"] is True
    with Registry(hub.db_path) as reg:  # it happened on the hub's registry
        assert [v.ref for v in reg.log("team/bot")] == ["team/bot@1"]
        assert [(e.action, e.actor) for e in reg.events(limit=2)][-1][0] == "rm"


def test_scopes_decide_what_each_shows(hub, run, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_TOKEN", hub.token("read:team"))
    remote = ["--from", hub.url]
    assert [v["ref"] for v in as_json(run, "list", *remote)] == ["team/bot@2", "team/bot@1"]
    refused = run("show", "other/secret", *remote, code=1).stderr
    assert "does not grant read access to other/secret" in refused
    assert len(refused.strip().splitlines()) == 1
    for args in (["tag", "team/bot@1", "x"], ["rm", "team/bot@1"], ["gc"], ["verify"]):
        err = run(*args, *remote, code=1).stderr
        assert "does not grant" in err and len(err.strip().splitlines()) == 1, args
    monkeypatch.setenv("ADAPTERHUB_TOKEN", hub.token("write:team"))
    assert "does not grant admin access" in run("rm", "team/bot@1", *remote, code=1).stderr
    err = run("gc", *remote, code=1).stderr
    assert "whole registry" in err
    with Registry(hub.db_path) as reg:
        assert len(reg.list()) == 3  # nothing changed


def test_an_hf_remote_is_refused_clearly(run):
    err = run("list", "--from", "hf://team/bot", code=1).stderr
    assert "hf:// remote" in err and len(err.strip().splitlines()) == 1
