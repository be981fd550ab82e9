"""apply, merge and rebuild on registry refs; mixtures of experts fold one expert at a time."""

import copy
import json

import pytest
import torch
from adapterhub_ttlora_moe import load_moe, train_router
from click.testing import CliRunner

import adapterhub
from adapterhub.cli import cli
from adapterhub.registry import Registry

TASKS = ["alpha", "beta", "gamma"]


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=16)
    return BertModel(config).eval()


def adapter(base, method, seed, **fields):
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    adapterhub.attach(model, method, target_modules=["query", "value"], **fields)
    return adapterhub.extract(model, labels={"name": TASKS[seed % 3]})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A base checkpoint, a registry with 3 ttlora experts, their MoE and two LoRAs."""
    root = tmp_path_factory.mktemp("world")
    base = tiny_bert()
    base.save_pretrained(root / "base")
    experts = [adapter(base, "ttlora", seed, r=2) for seed in range(3)]
    ids = torch.randint(0, 64, (30, 6), generator=torch.Generator().manual_seed(0))
    moe = train_router(base, experts, {"input_ids": ids}, [i % 3 for i in range(30)],
                       epochs=2, quiet=True)
    loras = [adapter(base, "lora", seed, r=4, init_lora_weights=False) for seed in range(2)]
    url = str(root / "registry.db")
    with Registry(url) as registry:
        for name, package in zip(TASKS, experts):
            registry.push(package, f"t/{name}", progress=False)
        registry.push(moe, "t/moe", progress=False)
        for index, package in enumerate(loras):
            registry.push(package, f"t/lora{index}", progress=False)
    return {"root": root, "base": root / "base", "db": url, "experts": experts, "moe": moe,
            "loras": loras, "model": base}


def run(world, *args):
    return CliRunner().invoke(cli, [*map(str, args), "--db", world["db"]])


def test_apply_takes_a_ref(world, tmp_path):
    world["loras"][0].save(tmp_path / "dir")
    by_ref = run(world, "apply", world["base"], "t/lora0", "--out", tmp_path / "a")
    by_dir = run(world, "apply", world["base"], tmp_path / "dir", "--out", tmp_path / "b")
    assert by_ref.exit_code == 0 and by_dir.exit_code == 0, by_ref.output + by_dir.output
    assert (tmp_path / "a/model.safetensors").read_bytes() == \
        (tmp_path / "b/model.safetensors").read_bytes()
    record = json.loads((tmp_path / "a/adapterhub-build.json").read_text())
    assert record["adapters"][0]["digest"] == world["loras"][0].digest


def test_apply_of_a_moe_needs_an_expert(world, tmp_path):
    result = run(world, "apply", world["base"], "t/moe", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "routes each input to one of 3 experts (alpha, beta, gamma)" in result.stderr
    assert "--expert NAME" in result.stderr
    assert not (tmp_path / "out").exists()
    result = run(world, "apply", world["base"], "t/moe", "--expert", "delta", "--out",
                 tmp_path / "out")
    assert result.exit_code == 1 and "no expert 'delta'" in result.stderr


def test_apply_with_expert_bakes_in_that_expert(world, tmp_path):
    moe = run(world, "apply", world["base"], "t/moe", "--expert", "beta", "--out",
              tmp_path / "moe")
    direct = run(world, "apply", world["base"], "t/beta", "--out", tmp_path / "direct")
    assert moe.exit_code == 0 and direct.exit_code == 0, moe.output + moe.stderr
    merged = (tmp_path / "moe/model.safetensors").read_bytes()
    assert merged == (tmp_path / "direct/model.safetensors").read_bytes()
    assert merged != (world["base"] / "model.safetensors").read_bytes()


def test_expert_on_an_ordinary_adapter_is_refused(world, tmp_path):
    result = run(world, "apply", world["base"], "t/lora0", "--expert", "beta", "--out",
                 tmp_path / "out")
    assert result.exit_code == 1 and "has no experts" in result.stderr


def test_merge_of_a_moe_needs_an_expert(world):
    result = run(world, "merge", "t/moe", "t/lora0", "--strategy", "linear", "--to", "t/m")
    assert result.exit_code == 1 and "--expert NAME" in result.stderr


def test_load_a_moe_ref_brings_its_experts(world):
    x = {"input_ids": torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(3))}
    ours = copy.deepcopy(world["model"])
    with Registry(world["db"]) as registry:
        adapterhub.load(ours, "t/moe", registry=registry)
    reference = copy.deepcopy(world["model"])
    load_moe(reference, world["moe"], world["experts"])
    ours.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**x).last_hidden_state,
                                   reference(**x).last_hidden_state, atol=0, rtol=0)


def test_pulling_a_moe_brings_its_experts(world, tmp_path):
    with Registry(tmp_path / "other.db") as other:
        other.pull("t/moe", source=world["db"], progress=False)
        for expert in world["experts"]:
            assert other.find(expert.digest) is not None


def test_merge_to_a_registry_then_rebuild(world):
    result = run(world, "merge", "t/lora0", "t/lora1", "--strategy", "ties", "--density",
                 "0.5", "--weights", "1,0.5", "--to", "t/merged", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    info = json.loads(result.stdout)
    assert info["ref"] == "t/merged@1"
    assert info["parents"] == [p.digest for p in world["loras"]]
    assert info["recipe"]["strategy"] == "ties"
    rebuilt = run(world, "rebuild", "t/merged")
    assert rebuilt.exit_code == 0 and "digest" in rebuilt.output and "matches" in rebuilt.output


def test_rebuild_catches_a_recipe_that_does_not_reproduce(world):
    from adapterhub.engines.merging import merge_adapters

    merged = merge_adapters(world["loras"], "linear", weights=[1.0, 1.0])
    forged = merged.with_manifest(recipe={**merged.manifest.recipe, "weights": [1.0, 2.0]})
    with Registry(world["db"]) as registry:
        registry.push(forged, "t/forged", progress=False)
    result = run(world, "rebuild", "t/forged", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["digest"] == forged.digest
    plain = run(world, "rebuild", "t/lora0")
    assert plain.exit_code == 2 and "has no merge recipe" in plain.output
