"""The registry commands, end to end through click (SQLite; the API tests cover PostgreSQL)."""

import json

import pytest
import torch
from helpers.registry_helpers import LOCAL
from sqlalchemy import select, update

from adapterhub.io.package import AdapterPackage
from registry_db.models import Blob, Chunk

CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["lin0", "lin1"]}


def save_lora(path, seed=0, **fields):
    g = torch.Generator().manual_seed(seed)
    tensors = {"lin0.lora_A": torch.randn(4, 16, generator=g),
               "lin0.lora_B": torch.randn(32, 4, generator=g),
               "lin1.lora_A": torch.randn(4, 32, generator=g),
               "lin1.lora_B": torch.randn(16, 4, generator=g)}
    AdapterPackage.build("lora", CONFIG, tensors, base_name="tiny", **fields).save(path)
    return path


@pytest.fixture(autouse=True)
def _local_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_DB", str(tmp_path / "registry.db"))


def as_json(result):
    return json.loads(result.stdout)


def test_push_list_show_log_tag_rm(run, tmp_path):
    save_lora(tmp_path / "a", metrics={"acc": 0.9})
    save_lora(tmp_path / "b", seed=1)
    assert "registry ready" in run("init").stdout
    out = run("push", "a", "team/bot", "-m", "first", "--tag", "dev", "--label", "data=v1",
              "-q").stdout
    assert out.startswith("team/bot@1  sha256:") and "[dev]" in out
    assert "(unchanged)" in run("push", "a", "team/bot", "--label", "data=v1").stdout
    pushed = as_json(run("push", "b", "team/bot", "--json"))
    assert pushed["ref"] == "team/bot@2" and pushed["created"] is True

    listed = as_json(run("list", "--json"))
    assert [v["ref"] for v in listed] == ["team/bot@2", "team/bot@1"]
    assert [v["ref"] for v in as_json(run("list", "--label", "data=v1", "--json"))] == [
        "team/bot@1"]
    assert as_json(run("list", "--method", "loha", "--json")) == []
    table = run("list").stdout.splitlines()
    assert table[0].split() == ["REF", "TAGS", "METHOD", "BASE", "SIZE", "CREATED", "MESSAGE"]

    shown = as_json(run("show", "team/bot:dev", "--json"))
    assert (shown["ref"], shown["number"], shown["tags"], shown["message"]) == (
        "team/bot@1", 1, ["dev"], "first")
    assert shown["labels"] == {"data": "v1"} and shown["metrics"] == {"acc": 0.9}
    assert shown["author"] and shown["created_at"]
    assert "ref:         team/bot@1  [dev]" in run("show", "team/bot@1").stdout
    assert as_json(run("show", "a", "--json"))["digest"] != shown["digest"]  # a dir still works

    assert [v["number"] for v in as_json(run("log", "team/bot", "--json"))] == [2, 1]
    assert run("tag", "team/bot@2", "prod").stdout.strip() == "team/bot:prod -> team/bot@2"
    assert "deleted team/bot:dev" in run("tag", "--delete", "team/bot:dev").stdout
    assert "deleted team/bot@1" in run("rm", "team/bot@1").stdout
    assert "(deleted)" in run("log", "team/bot").stdout


def test_diff_pull_export_and_remotes(run, tmp_path):
    save_lora(tmp_path / "a")
    save_lora(tmp_path / "b", seed=1)
    run("push", "a", "team/bot")
    run("push", "b", "team/bot")
    result = as_json(run("diff", "team/bot@1", "team/bot@2", "--json"))
    assert result["changed_tensors"] == 4
    assert "tensors: 4 of 4 differ" in run("diff", "team/bot@1", "team/bot@2").stdout

    run("pull", "team/bot@1", "--out", "native")
    assert (tmp_path / "native" / "adapter.json").exists()
    run("export", "team/bot@2", "--format", "peft", "--out", "exported")
    assert (tmp_path / "exported" / "adapter_config.json").exists()

    assert run("remote", "add", "origin", "other.db").stdout.strip() == (
        f"origin -> {tmp_path / 'other.db'}")
    run("remote", "add", "team", "postgresql://bob:s3cret@db.internal/adapters")
    listed = as_json(run("remote", "list", "--json"))
    assert [r["name"] for r in listed] == ["origin", "team"]
    assert listed[1]["url"] == "postgresql://bob:***@db.internal/adapters"
    assert "s3cret" not in run("remote", "list").stdout
    run("remote", "remove", "team")
    run("push", "team/bot@2", "team/bot", "--to", "origin", "--tag", "prod")
    theirs = as_json(run("list", "--db", "other.db", "--json"))
    assert [(v["ref"], v["tags"]) for v in theirs] == [("team/bot@1", ["prod"])]
    pulled = as_json(run("pull", "team/bot:prod", "--from", "other.db", "--db", "third.db",
                         "--out", "peft", "--format", "peft", "--json"))
    assert pulled["digest"] == theirs[0]["digest"] and pulled["format"] == "peft"
    assert (tmp_path / "peft" / "adapter_model.safetensors").exists()
    run("remote", "remove", "origin")
    err = run("pull", "team/bot", "--from", "origin", code=1).stderr
    assert err.startswith("Error: no remote named 'origin'") and len(err.splitlines()) == 1


def test_gc_verify_and_corruption(run, tmp_path):
    from registry_db import RegistryService

    for seed in range(4):
        save_lora(tmp_path / f"a{seed}", seed=seed)
        run("push", f"a{seed}", "team/bot", *(["--tag", "prod"] if seed == 0 else []))
    dry = as_json(run("gc", "--keep-last", "1", "--keep-tagged", "--dry-run", "--grace", "0",
                      "--json"))
    assert dry["retired"] == ["team/bot@2", "team/bot@3"] and dry["dry_run"]
    assert len(as_json(run("list", "--json"))) == 4
    out = run("gc", "--keep-last", "1", "--keep-tagged", "--grace", "0").stdout
    assert "retire team/bot@2" in out and "8 blob(s)" in out
    assert as_json(run("verify", "--json"))["ok"] is True
    assert run("verify").stdout.startswith("ok: 2 versions, 8 blobs")

    with RegistryService(tmp_path / "registry.db") as service:
        victim = service.resolve("team/bot@4", caller=LOCAL).manifest.tensors[
            "lin1.lora_A"].digest
        with service.db.write() as s:
            row = s.execute(select(Chunk.blob_id, Chunk.data).join(Blob)
                            .where(Blob.digest == victim)).one()
            data = bytearray(row.data)
            data[len(data) // 2] ^= 0x04
            s.execute(update(Chunk).where(Chunk.blob_id == row.blob_id).values(data=bytes(data)))
    result = run("verify", code=1)
    assert f"corrupt-blob: blob {victim} is corrupt" in result.stdout
    assert "team/bot@4 tensor 'lin1.lora_A'" in result.stdout
    assert result.stderr.startswith("Error: verify found 1 problem(s)")
    report = json.loads(run("verify", "--json", code=1).stdout)
    assert report["problems"][0]["blob"] == victim
    err = run("pull", "team/bot@4", "--out", "x", code=1).stderr
    assert victim in err and len(err.splitlines()) == 1


def test_promote_and_ci(run, tmp_path, monkeypatch):
    save_lora(tmp_path / "good", metrics={"eval": {"accuracy": 0.93}})
    save_lora(tmp_path / "bad", seed=1, metrics={"eval": {"accuracy": 0.71}})
    monkeypatch.setenv("GITHUB_SHA", "0123abc")
    monkeypatch.setenv("GITHUB_REF_NAME", "main")
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "org/repo")
    monkeypatch.setenv("GITHUB_RUN_ID", "99")
    monkeypatch.setenv("GITHUB_ACTOR", "ci-bot")
    good = as_json(run("push", "good", "team/bot", "--ci", "--json"))
    assert good["labels"] == {"ci.provider": "github", "git.sha": "0123abc",
                              "git.branch": "main",
                              "ci.run_url": "https://github.com/org/repo/actions/runs/99"}
    assert good["author"] == "ci-bot"
    run("promote", "team/bot@1", "--tag", "prod", "--if", "eval.accuracy>=0.9")
    run("push", "bad", "team/bot", "--ci")
    err = run("promote", "team/bot@2", "--tag", "prod", "--if", "eval.accuracy>=0.9",
              code=1).stderr
    assert err == ("Error: not promoted: team/bot@2 has eval.accuracy=0.71, which fails "
                   "eval.accuracy>=0.9; tag 'prod' stays on team/bot@1.\n")
    assert as_json(run("show", "team/bot:prod", "--json"))["number"] == 1
    monkeypatch.delenv("GITHUB_SHA")
    assert "no CI environment" in run("push", "good", "team/bot", "--ci", code=1).stderr


@pytest.mark.parametrize("args,message", [
    (["push", "a", "Team/Bot"], "invalid repository name 'Team/Bot'"),
    (["push", "a", "team/../x"], "invalid repository name"),
    (["push", "a", "team/bot", "--tag", "3"], "looks like a version number"),
    (["push", "a", "team/bot", "--label", "novalue"], "labels are KEY=VALUE"),
    (["push", "nowhere", "team/bot"], "'nowhere' is neither an adapter directory nor"),
    (["show", "team/none"], "team/none: no such directory, and no repository"),
    (["rm", "team/bot@1"], "no repository 'team/bot'"),
    (["rm", "team/bot"], "names no particular version"),
    (["tag", "team/bot@1"], "give either REF TAG"),
    (["gc", "--keep-tagged"], "refine --keep-last"),
    (["promote", "team/bot", "--tag", "prod", "--if", "acc=>1"], "invalid condition"),
    (["pull", "team/bot", "--from", "ftp://x/y"], "unknown remote 'ftp'"),
])
def test_errors_are_one_line(run, tmp_path, args, message):
    save_lora(tmp_path / "a")
    err = run(*args, code=1).stderr
    assert err.startswith("Error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err
