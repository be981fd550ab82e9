"""apply with quantized weights (QLoRA): a quantized base dequantized to bf16 (the default) or
kept quantized (--requantize, with the rounding error recorded), and QLoRA adapters folded into
a full-precision base (deq(Q(W)) rebuilt)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from click.testing import CliRunner

import adapterhub
from adapterhub import IncompatibleBaseModelError, MergeError, QuantizationError
from adapterhub.cli import cli
from adapterhub.engines.apply import BUILD_RECORD, apply_adapters
from adapterhub.engines.quantization import merge_dequantized, merge_requantized
from adapterhub.io.checkpoint import (INDEX_FILE, Checkpoint, load_quantized, read_quantized,
                                      stored_quantized)

# down_proj has 352 inputs: its blocks of 64 straddle rows
CONFIG = dict(vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
TARGETS = ["q_proj", "v_proj", "down_proj"]
NF4 = adapterhub.get_quantizer("nf4")


def _llama(seed=0):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).to(torch.bfloat16)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = Checkpoint(path)
    return {name: checkpoint.read_tensor(name) for name in checkpoint.tensors}


def _logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits.double()


@pytest.fixture(scope="module")
def qlora(tmp_path_factory):
    """A random-init Llama (bf16, 4 shards), its NF4 copy from ``adapterhub quantize``, a QLoRA
    adapter (non-zero B, trained-size ΔW) and the QLoRA model's own unmerged logits."""
    root = tmp_path_factory.mktemp("qlora")
    _llama().save_pretrained(root / "base", max_shard_size="300KB")
    (root / "base" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    result = CliRunner().invoke(cli, ["quantize", str(root / "base"), "--out", str(root / "q"),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    model = _llama()
    adapterhub.attach(model, "lora", r=4, lora_alpha=8, target_modules=TARGETS,
                      quantize="nf4", init_lora_weights=False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    package = adapterhub.extract(model)
    package.save(root / "pkg")
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    model.eval()
    return {"root": root, "base": root / "base", "q": root / "q", "pkg": root / "pkg",
            "package": package, "tokens": tokens, "logits": _logits(model, tokens)}


@pytest.fixture(scope="module")
def deltas(qlora):
    """Each adapted weight's ΔW (fp32), by checkpoint tensor name."""
    package = qlora["package"]
    method, config = package.method, package.config
    shapes = {n: tuple(t.shape) for n, t in _tensors(qlora["base"]).items()}
    return {f"{module}.weight": method.delta_weight(module, group, config,
                                                    shapes[f"{module}.weight"])
            for module, group in method.group_tensors(package.tensors).items()}


@pytest.fixture(scope="module")
def dequantized(qlora):
    out = qlora["root"] / "deq"
    result = CliRunner().invoke(cli, ["apply", str(qlora["q"]), str(qlora["pkg"]), "--out",
                                      str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


@pytest.fixture(scope="module")
def requantized(qlora):
    out = qlora["root"] / "req"
    result = CliRunner().invoke(cli, ["apply", str(qlora["q"]), str(qlora["pkg"]), "--out",
                                      str(out), "--requantize"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / BUILD_RECORD).read_text()), result.output


def _exact_logits(qlora, deltas) -> torch.Tensor:
    """The float64 reference: every weight deq(Q(W)) (as training saw it) + ΔW, unrounded."""
    checkpoint = Checkpoint(qlora["q"])
    state = {}
    for name in Checkpoint(qlora["base"]).tensors:
        if name in checkpoint.quantized:
            weight = NF4.dequantize(read_quantized(checkpoint, checkpoint.quantized[name].stored))
        else:
            weight = checkpoint.read_tensor(name)
        state[name] = weight.double() + deltas.get(name, torch.zeros(())).double()
    model = _llama().double()
    model.load_state_dict(state)
    return _logits(model, qlora["tokens"])


def test_dequantized_build_reproduces_the_qlora_model(qlora, deltas, dequantized):
    out, record = dequantized
    assert record["dtype"] == "bf16"
    assert record["tensors"] == {"merged": 6, "copied": 7, "cast": 8}
    assert record["quantization"] == {
        "base": [{"name": "nf4", "config": {"blocksize": 64, "double_quant": True,
                                            "compute_dtype": "bfloat16"}}],
        "output": "full_precision", "weights": {"dequantized": 14}}
    assert record["adapters"][0]["folded_into"] == {"dequantized": 6}
    assert record["adapters"][0]["quantization"]["name"] == "nf4"
    # a plain bf16 checkpoint: the base's names, dtypes, shapes, shards and index
    built, base, quantized = Checkpoint(out), Checkpoint(qlora["base"]), Checkpoint(qlora["q"])
    assert not stored_quantized(built)
    assert built.fingerprint == base.fingerprint == record["fingerprint"]
    assert [f.name for f in built.files] == [f.name for f in base.files]
    index = json.loads((out / INDEX_FILE).read_text())
    base_index = json.loads((qlora["base"] / INDEX_FILE).read_text())
    assert index["weight_map"] == base_index["weight_map"]
    assert index["metadata"]["total_size"] == base_index["metadata"]["total_size"]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'
    # every value: deq(Q(W)) + ΔW in fp32, one rounding to bf16; the rest byte for byte
    tensors = _tensors(out)
    for name, tensor in tensors.items():
        if name in quantized.quantized:
            q = read_quantized(quantized, quantized.quantized[name].stored)
            expected = merge_dequantized(q, deltas[name]) if name in deltas else \
                NF4.dequantize(q, torch.bfloat16)
            assert torch.equal(tensor, expected), name
        else:
            assert torch.equal(tensor, quantized.read_tensor(name)), name
    # its logits are the QLoRA model's up to bf16 rounding: as close to the exact float64
    # model as the unmerged QLoRA model itself is
    exact = _exact_logits(qlora, deltas)
    merged = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    logits = _logits(merged, qlora["tokens"])
    ulp = 2 ** -7 * float(exact.abs().max())  # one bf16 step at the largest logit
    qlora_error = float((qlora["logits"] - exact).abs().max())
    build_error = float((logits - exact).abs().max())
    assert build_error <= 2 * qlora_error and build_error <= ulp
    assert float((logits - qlora["logits"]).abs().max()) <= 2 * ulp
    print(f"\nmax |logits - exact|: QLoRA unmerged {qlora_error:.3g}, bf16 build "
          f"{build_error:.3g}")


def test_requantized_build_keeps_nf4_and_records_the_error(qlora, deltas, requantized,
                                                           dequantized):
    out, record, output = requantized
    base = Checkpoint(qlora["q"])
    built = Checkpoint(out)
    assert record["dtype"] is None
    assert record["tensors"] == {"merged": 6, "copied": 15, "cast": 0}
    section = record["quantization"]
    assert section["output"] == "quantized"
    assert section["weights"] == {"requantized": 6, "kept": 8}
    assert record["adapters"][0]["folded_into"] == {"requantized": 6}
    assert json.loads((out / "config.json").read_text()) == \
        json.loads((qlora["q"] / "config.json").read_text())
    assert set(json.loads((out / INDEX_FILE).read_text())["weight_map"]) == set(base.tensors)
    assert set(built.quantized) == set(base.quantized)
    reports = section["requantization"]["tensors"]
    assert set(reports) == set(deltas)
    for name, info in base.quantized.items():
        if name not in deltas:  # untouched: every tensor byte for byte
            for part in info.stored.tensors:
                assert torch.equal(built.read_tensor(part), base.read_tensor(part)), part
            continue
        # merged: what merge_requantized gives, with the same report
        expected, report = merge_requantized(read_quantized(base, info.stored), deltas[name])
        got = read_quantized(built, built.quantized[name].stored)
        assert torch.equal(got.data, expected.data), name
        for key, value in expected.state.items():
            assert torch.equal(got.state[key], value), (name, key)
        for key, value in report.to_dict().items():
            assert reports[name][key] == pytest.approx(value, rel=1e-6), (name, key)
    # the lost fraction recomputed independently for one weight, from the files alone
    name = "model.layers.1.mlp.down_proj.weight"
    before = NF4.dequantize(read_quantized(base, base.quantized[name].stored)).double()
    after = NF4.dequantize(read_quantized(built, built.quantized[name].stored)).double()
    ideal = before + deltas[name].double()
    lost = float((after - ideal).norm() / (ideal - before).norm())
    assert reports[name]["lost_fraction"] == pytest.approx(lost, rel=1e-4)
    assert reports[name]["max_abs_error"] == pytest.approx(
        float((after - ideal).abs().max()), rel=1e-4)
    total = section["requantization"]["total"]
    assert total["numel"] == sum(deltas[n].numel() for n in deltas)
    for report in [total, *reports.values()]:
        assert 0 < report["lost_fraction"] < 1
        assert 0 < report["changed_fraction"] <= 1
        assert 0 < report["max_abs_error"] < report["max_abs_delta"]
    assert f"rounding error {total['lost_fraction']:.1%} of the norm of ΔW" in output
    assert "warning" not in output  # ΔW is large here: most of it survives
    # it loads back (ours and transformers + bitsandbytes), and serves worse than bf16
    model = load_quantized(_llama(seed=1), out)
    logits = _logits(model, qlora["tokens"])
    exact = _exact_logits(qlora, deltas)
    bf16 = transformers.LlamaForCausalLM.from_pretrained(dequantized[0], dtype=torch.bfloat16)
    assert float((logits - exact).abs().max()) > \
        5 * float((_logits(bf16, qlora["tokens"]) - exact).abs().max())
    import bitsandbytes.functional as F

    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    layer = loaded.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit"
    mine = NF4.dequantize(read_quantized(
        built, built.quantized["model.layers.0.self_attn.q_proj.weight"].stored))
    assert torch.equal(F.dequantize_4bit(layer.weight.data, layer.weight.quant_state), mine)


def test_qlora_adapter_on_the_full_precision_base(qlora, deltas, dequantized, tmp_path):
    """deq(Q(W)) rebuilt from the bf16 base: the same merged values as on the NF4 base."""
    record = apply_adapters(qlora["base"], [qlora["pkg"]], tmp_path / "adapted",
                            show_progress=False)
    assert record["dtype"] == "bf16"
    assert record["quantization"] == {"base": [], "output": "full_precision",
                                      "weights": {"roundtrip": 6}, "untouched": "original"}
    assert record["adapters"][0]["folded_into"] == {"roundtrip": 6}
    from_nf4, base = _tensors(dequantized[0]), _tensors(qlora["base"])
    built = _tensors(tmp_path / "adapted")
    for name, tensor in built.items():
        # adapted: as from the NF4 base; the rest: the base's own weights
        assert torch.equal(tensor, from_nf4[name] if name in deltas else base[name]), name
    # --untouched roundtrip: every Linear weight as in training, i.e. the NF4 build exactly
    record = apply_adapters(qlora["base"], [qlora["pkg"]], tmp_path / "all",
                            untouched="roundtrip", show_progress=False)
    assert record["quantization"]["weights"] == {"roundtrip": 14}
    assert record["fingerprint"] == dequantized[1]["fingerprint"]
    everything = _tensors(tmp_path / "all")
    assert set(everything) == set(from_nf4)
    for name, tensor in everything.items():
        assert torch.equal(tensor, from_nf4[name]), name


def test_output_head_stays_full_precision(qlora, tmp_path):
    """QLoRA keeps the output head in bf16: an adapter on it was trained against W itself,
    on either base."""
    model = _llama()
    adapterhub.attach(model, "lora", r=2, target_modules=["q_proj", "lm_head"],
                      quantize="nf4", init_lora_weights=False)
    package = adapterhub.extract(model)
    assert package.manifest.quantization["name"] == "nf4"
    built = []
    for base, name in ((qlora["base"], "from_bf16"), (qlora["q"], "from_nf4")):
        apply_adapters(base, [package], tmp_path / name, show_progress=False)
        built.append(_tensors(tmp_path / name))
    delta = package.method.delta_weight("lm_head", package.method.group_tensors(
        package.tensors)["lm_head"], package.config, (256, 128))
    head = _tensors(qlora["base"])["lm_head.weight"]
    for tensors in built:
        assert torch.equal(tensors["lm_head.weight"], (head.float() + delta).bfloat16())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(built[0][name], built[1][name])


def test_refusals_write_nothing(qlora, tmp_path):
    from peft import LoraConfig, get_peft_model

    runner = CliRunner()
    out = tmp_path / "builds" / "out"
    # another model's adapter: shapes checked against the logical shape of the NF4 weights
    small = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**CONFIG,
                                                                      "hidden_size": 64}))
    get_peft_model(small, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "other")
    with pytest.raises(IncompatibleBaseModelError, match=r"q_proj.weight has shape \[128, 128\]"):
        apply_adapters(qlora["q"], [qlora["pkg"], tmp_path / "other"], out)
    # an adapter trained on another quantization of the base
    qlora["package"].with_manifest(quantization={
        "name": "nf4", "config": {"blocksize": 128, "double_quant": True,
                                  "compute_dtype": "bfloat16"}}).save(tmp_path / "bs128")
    result = runner.invoke(cli, ["apply", str(qlora["q"]), str(tmp_path / "bs128"), "--out",
                                 str(out)])
    assert result.exit_code == 1
    assert "is stored as nf4 (blocksize=64, double_quant=true); the adapter was trained on " \
           "nf4 (blocksize=128, double_quant=true)" in result.output
    check = runner.invoke(cli, ["check", str(tmp_path / "bs128"), "--base", str(qlora["q"])])
    assert check.exit_code == 1 and "blocksize=128" in check.output
    check = runner.invoke(cli, ["check", str(qlora["pkg"]), "--base", str(qlora["q"])])
    assert check.exit_code == 0 and "ok: 6 modules fit" in check.output
    # --requantize needs a quantized base; --untouched roundtrip a full-precision one
    result = runner.invoke(cli, ["apply", str(qlora["base"]), str(qlora["pkg"]), "--out",
                                 str(out), "--requantize"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --requantize keeps a quantized base quantized, "
                                    "but") and result.output.count("\n") == 1
    with pytest.raises(MergeError, match="is for a full-precision base"):
        apply_adapters(qlora["q"], [qlora["pkg"]], out, untouched="roundtrip")
    # a QLoRA adapter and a full-precision one on the same weight: which base is it?
    plain = qlora["package"].with_manifest(quantization=None)
    with pytest.raises(MergeError, match="were trained on different bases"):
        apply_adapters(qlora["base"], [qlora["pkg"], plain], out)
    with pytest.raises(MergeError, match="needs an adapter trained on a quantized base"):
        apply_adapters(qlora["base"], [plain], out, untouched="roundtrip")
    assert not out.exists()
    assert not (tmp_path / "builds").exists() or not any((tmp_path / "builds").iterdir())


def test_full_precision_adapter_on_a_quantized_base(qlora, deltas, tmp_path):
    """Allowed (it is what serving it unmerged on the NF4 base computes), and said so; a
    small ΔW mostly rounds away, and that is said too."""
    plain = qlora["package"].with_manifest(quantization=None)
    plain.save(tmp_path / "plain")
    result = CliRunner().invoke(cli, ["apply", str(qlora["q"]), str(tmp_path / "plain"),
                                      "--out", str(tmp_path / "out"), "--requantize",
                                      "--weights", "0.05", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert "was trained on full-precision weights" in result.output
    assert "warning: re-quantizing erased most of what the adapters learned" in result.output
    record = json.loads((tmp_path / "out" / BUILD_RECORD).read_text())
    assert record["adapters"][0]["folded_into"] == {"requantized": 6}
    assert record["adapters"][0]["quantization"] is None
    base, built = Checkpoint(qlora["q"]), Checkpoint(tmp_path / "out")
    # --dtype casts full-precision tensors only: the quantization state keeps its dtypes
    assert {n: t.info.dtype for n, t in built.tensors.items()} == \
        {n: t.info.dtype for n, t in base.tensors.items()}
    name = "model.layers.0.self_attn.v_proj.weight"
    expected, _ = merge_requantized(read_quantized(base, base.quantized[name].stored),
                                    deltas[name], scale=0.05)
    assert torch.equal(read_quantized(built, built.quantized[name].stored).data, expected.data)


def test_transformers_saved_base(qlora, dequantized, tmp_path):
    """A checkpoint transformers + bitsandbytes quantized and saved builds the same model."""
    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_use_double_quant=True,
                                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        qlora["base"], quantization_config=config, device_map="cpu")
    model.save_pretrained(tmp_path / "bnb")
    record = apply_adapters(tmp_path / "bnb", [qlora["pkg"]], tmp_path / "out",
                            show_progress=False)
    assert record["quantization"]["weights"] == {"dequantized": 14}
    ours, theirs = _tensors(dequantized[0]), _tensors(tmp_path / "out")
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(tensor, ours[name]), name
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())


def test_invalid_quantized_weight_is_refused_before_writing(qlora, tmp_path):
    from safetensors.torch import save_file

    base = Checkpoint(qlora["q"])
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors = {part: base.read_tensor(part) for part in base.quantized[name].stored.tensors}
    tensors[f"{name}.absmax"] = tensors[f"{name}.absmax"][:-1]  # truncated
    (tmp_path / "broken").mkdir()
    save_file(tensors, tmp_path / "broken" / "model.safetensors")
    with pytest.raises(QuantizationError, match="absmax holds 255 values"):
        apply_adapters(tmp_path / "broken", [qlora["pkg"]], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    assert math.prod(base.shape(name)) == 128 * 128
