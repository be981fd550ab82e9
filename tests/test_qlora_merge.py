"""Merging adapters into quantized bases: the dequantized (default) and requantized paths."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub.engines.quantization import (RequantizationReport, merge_dequantized,
                                             merge_requantized, roundtrip_quantized)


def _weight(shape=(96, 160), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def _delta(shape, scale, seed=1):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(4, shape[1], generator=generator)
    b = torch.randn(shape[0], 4, generator=generator)
    return (b @ a) * scale


def test_merge_dequantized_is_fp32_add_then_bf16():
    quantizer = adapterhub.get_quantizer("nf4")
    weight = _weight()
    q = quantizer.quantize(weight, quantizer.make_config())
    delta = _delta(weight.shape, 1e-3)
    merged = merge_dequantized(q, delta, scale=0.5)
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, (quantizer.dequantize(q).float() + 0.5 * delta).bfloat16())
    assert merge_dequantized(q, delta, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(adapterhub.MergeError):
        merge_dequantized(q, torch.zeros(3, 3))
    with pytest.raises(adapterhub.MergeError):
        merge_dequantized(q, torch.full(tuple(weight.shape), float("nan")))


def test_quantized_base_recreates_what_training_saw():
    weight = _weight()
    record = {"name": "nf4", "config": {"blocksize": 64, "double_quant": True,
                                        "compute_dtype": "bfloat16"}}
    quantizer = adapterhub.get_quantizer("nf4")
    expected = quantizer.dequantize(quantizer.quantize(weight, quantizer.make_config()))
    assert torch.equal(roundtrip_quantized(weight, record), expected)
    assert not torch.equal(roundtrip_quantized(weight, {"name": "nf4",
                                                   "config": {"blocksize": 128}}), expected)


def test_requantize_reports_how_much_of_the_delta_is_lost():
    quantizer = adapterhub.get_quantizer("nf4")
    weight = _weight()
    q = quantizer.quantize(weight, quantizer.make_config())
    base = quantizer.dequantize(q).float()

    tiny = _delta(weight.shape, 1e-6)  # far below an NF4 step: rounds away
    requantized, report = merge_requantized(q, tiny)
    assert isinstance(requantized, adapterhub.QuantizedTensor)
    assert requantized.config == q.config and requantized.shape == q.shape
    assert report.lost_fraction > 0.9
    assert report.max_abs_delta == pytest.approx(float(tiny.abs().max()), rel=1e-3)

    large = _delta(weight.shape, 3e-3)  # comparable to the weights themselves
    requantized, big = merge_requantized(q, large)
    served = quantizer.dequantize(requantized).float()
    error = served - (base + large)
    assert big.error_norm == pytest.approx(float(error.norm()), rel=1e-4)
    assert big.max_abs_error == pytest.approx(float(error.abs().max()), rel=1e-5)
    assert big.lost_fraction == pytest.approx(big.error_norm / big.delta_norm)
    assert big.lost_fraction < report.lost_fraction
    assert 0 < big.changed_fraction <= 1
    total = report + big
    assert total.numel == 2 * weight.numel()
    assert total.delta_norm == pytest.approx((report.delta_sq + big.delta_sq) ** 0.5)
    assert set(total.to_dict()) == {"numel", "delta_norm", "error_norm", "lost_fraction",
                                    "max_abs_delta", "max_abs_error", "changed_fraction"}
    assert isinstance(total, RequantizationReport)


def test_deployment_merge_matches_the_trained_qlora_model():
    """Train on NF4, extract; rebuilding deq(Q(W)) from the full-precision weights and adding
    ΔW from the package gives the model's own merged weights."""
    from adapterhub.testing.conformance import TinyMLP

    original = TinyMLP.build()
    full = {k: v.clone() for k, v in original.state_dict().items()}
    model = TinyMLP.build()
    layers = adapterhub.attach(model, "lora", r=4, target_modules=["lin0", "lin1"],
                               quantize="nf4", init_lora_weights=False)
    x = torch.randn(8, 16)
    package = adapterhub.extract(model)
    method, config = package.method, package.config
    groups = method.group_tensors(package.tensors)
    for path, layer in layers.items():
        quantizer = adapterhub.get_quantizer("nf4")
        weight = full[f"{path}.weight"]
        q = quantizer.quantize(weight, quantizer.make_config(**package.manifest.quantization[
            "config"]))
        delta = method.delta_weight(path, groups[path], config, tuple(weight.shape))
        deployed = merge_dequantized(q, delta)
        assert torch.equal(roundtrip_quantized(weight, package.manifest.quantization),
                           quantizer.dequantize(q))
        layer.merge()
        # training rounded deq(Q(W)) to bf16 (the compute dtype) before adding ΔW; this fp32
        # base is dequantized in fp32: one bf16 rounding apart at most
        step = 2 ** -7 * float(deployed.float().abs().max())  # >= one bf16 ulp of the largest
        torch.testing.assert_close(deployed.float(), layer.base_layer.weight.float(),
                                   atol=step, rtol=0)
    assert torch.isfinite(model(x)).all()
