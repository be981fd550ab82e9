"""QLoRA: LoRA-family adapters train, merge and round-trip on an NF4 base."""

from __future__ import annotations

import copy

import pytest
import torch

import adapterhub
from adapterhub.testing import MethodConformance
from adapterhub.testing.conformance import TinyMLP


class TestLoraOnNF4(MethodConformance):
    """The whole method conformance suite, with every Linear of the base in NF4.

    Computing in fp32 here keeps "merged forward equals unmerged" at the suite's tolerance;
    bf16 compute is checked below with a bf16-sized tolerance.
    """

    method = "lora"
    config = {"r": 4, "lora_alpha": 8}

    def make_model(self):
        model = TinyMLP.build()
        adapterhub.quantize_model(model, "nf4", {"compute_dtype": "float32"})
        return model


def _qlora_model(seed: int = 0, **quantize_config):
    model = TinyMLP.build(seed)
    layers = adapterhub.attach(model, "lora", r=4, lora_alpha=8, target_modules="all-linear",
                               init_lora_weights=False, quantize="nf4",
                               quantize_config=quantize_config or None)
    return model, layers


def test_attach_quantizes_every_linear_and_records_it():
    from adapterhub_qlora.linear import Linear4bit

    model, layers = _qlora_model()
    assert sorted(layers) == ["head", "lin0", "lin1"]  # TinyMLP has no output embeddings
    assert all(isinstance(layer.base_layer, Linear4bit) for layer in layers.values())
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    package = adapterhub.extract(model)
    assert package.manifest.quantization == {
        "name": "nf4", "config": {"blocksize": 64, "double_quant": True,
                                  "compute_dtype": "bfloat16"}}
    assert package.manifest.base_model["modules"]["lin0"] == [32, 16]


def test_attach_checks_targets_before_quantizing():
    model = TinyMLP.build()
    with pytest.raises(adapterhub.TargetError):
        adapterhub.attach(model, "lora", target_modules=["nope"], quantize="nf4")
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if "lin" in n)
    with pytest.raises(adapterhub.ConfigError):
        adapterhub.attach(model, "lora", target_modules=["lin0"], quantize="nf4",
                          quantize_config={"blocksize": 48})
    with pytest.raises(adapterhub.UnknownQuantizerError):
        adapterhub.attach(model, "lora", target_modules=["lin0"], quantize="nf3")
    with pytest.raises(adapterhub.ConfigError):
        adapterhub.attach(model, "lora", target_modules=["lin0"], quantize_config={})
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if "lin" in n)


def test_quantized_layer_computes_in_bf16_with_dequantized_weight():
    model = TinyMLP.build()
    reference = copy.deepcopy(model)
    adapterhub.quantize_model(model, "nf4")
    quantizer = adapterhub.get_quantizer("nf4")
    x = torch.randn(5, 16)
    for name in ("lin0", "lin1", "head"):
        layer, original = model.get_submodule(name), reference.get_submodule(name)
        expected_weight = quantizer.dequantize(
            quantizer.quantize(original.weight, quantizer.make_config())).to(torch.bfloat16)
        assert torch.equal(layer.weight, expected_weight)
    out = model.lin0(x)
    expected = torch.nn.functional.linear(x.to(torch.bfloat16), model.lin0.weight,
                                          reference.lin0.bias.to(torch.bfloat16))
    assert out.dtype == torch.float32 and torch.equal(out, expected.float())


def test_gradients_reach_only_the_adapter_and_keep_no_dense_weight():
    model, layers = _qlora_model()
    x = torch.randn(5, 16, requires_grad=True)  # no activation shaped like a weight
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).square().mean()
    loss.backward()
    weight_shapes = {tuple(layer.base_layer.weight.shape) for layer in layers.values()}
    assert not weight_shapes & set(saved), "a dequantized weight was kept for backward"
    for path, layer in layers.items():
        assert layer.lora_A.grad is not None and layer.lora_B.grad is not None, path
        assert all(not p.requires_grad for p in layer.base_layer.parameters())
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # the input gradient is the one through the dequantized weights (checked on one layer)
    layer = model.lin1.base_layer
    h = torch.randn(3, 32, requires_grad=True)
    layer(h).sum().backward()
    torch.testing.assert_close(h.grad, layer.weight.float().sum(0).expand(3, -1).to(
        torch.bfloat16).float(), atol=1e-2, rtol=1e-2)


def test_qlora_training_lowers_the_loss():
    model, _ = _qlora_model()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(4))
    target = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))
    optimizer = torch.optim.AdamW(adapterhub.param_groups(model, lr=1e-2))
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_merge_on_bf16_compute_matches_unmerged_and_unmerge_is_exact():
    model, layers = _qlora_model()
    x = torch.randn(16, 16)
    unmerged = model(x)
    packed = {p: layer.base_layer.packed.clone() for p, layer in layers.items()}
    weights = {p: layer.base_layer.weight.clone() for p, layer in layers.items()}
    for layer in layers.values():
        layer.merge()
        assert layer.base_layer.merged_weight is not None
    merged = model(x)
    # one bf16 rounding of deq(Q(W)) + ΔW per layer
    torch.testing.assert_close(merged, unmerged, atol=2e-2 * unmerged.abs().max().item(), rtol=0)
    for path, layer in layers.items():
        delta = layer.delta_weight()
        expected = (weights[path].float() + delta).to(torch.bfloat16)
        assert torch.equal(layer.base_layer.weight, expected), path
        layer.unmerge()
        assert torch.equal(layer.base_layer.packed, packed[path])
        assert torch.equal(layer.base_layer.weight, weights[path]), path
    assert torch.equal(model(x), unmerged)


def test_quantized_model_state_dict_round_trip():
    model = TinyMLP.build()
    adapterhub.quantize_model(model, "nf4", {"blocksize": 32})
    state = model.state_dict()
    assert "lin0.weight.quant_state.bitsandbytes__nf4" in state
    assert state["lin0.weight"].dtype == torch.uint8
    other = TinyMLP.build(seed=1)
    adapterhub.quantize_model(other, "nf4")
    other.load_state_dict(state)
    x = torch.randn(4, 16)
    assert torch.equal(other(x), model(x))
    assert other.lin0.config.blocksize == 32
    plain = TinyMLP.build(seed=2)
    adapterhub.quantize_model(plain, "nf4", {"double_quant": False})
    plain.load_state_dict(state)  # a double-quantized state into a plain layer
    assert torch.equal(plain(x), model(x))
    assert sorted(plain.lin0.state_dict()) == sorted(model.lin0.state_dict())
    bad = dict(state)
    bad["lin0.weight.absmax"] = bad["lin0.weight.absmax"][:3]
    with pytest.raises(adapterhub.QuantizationError):
        other.load_state_dict(bad)


def test_quantize_model_rules():
    from adapterhub_qlora.linear import Linear4bit

    model = TinyMLP.build()
    layers = adapterhub.quantize_model(model, "fp4", skip=["head"])
    assert sorted(layers) == ["lin0", "lin1"] and type(model.head) is torch.nn.Linear
    assert isinstance(model.lin0, Linear4bit) and model.lin0.quantizer.name == "fp4"
    adapterhub.attach(model, "lora", target_modules=["lin0"])
    with pytest.raises(adapterhub.ConfigError):
        adapterhub.quantize_model(model, "nf4")
    with pytest.raises(adapterhub.QuantizationError):
        adapterhub.get_quantizer("nf4").quantize(torch.ones(3, 3, dtype=torch.int32),
                                                 adapterhub.get_quantizer("nf4").make_config())


def test_quantized_model_runs_under_inference_mode_and_no_grad():
    """The kernels spread chunks over threads; torch's thread-local modes must follow."""
    model = TinyMLP.build()
    adapterhub.quantize_model(model, "nf4")
    big = adapterhub.get_quantizer("nf4")
    weight = torch.randn(700, 300)
    x = torch.randn(4, 16)
    expected = model(x)
    with torch.inference_mode():
        assert torch.equal(model(x), expected)
        q = big.quantize(weight, big.make_config())
        values = big.dequantize(q)
    with torch.no_grad():
        assert torch.equal(big.dequantize(big.quantize(weight, big.make_config())), values)
