"""TT-LoRA kernels: factorisation, index order, contraction vs dense ΔW, init, parameter counts."""

import math

import pytest
import torch
from adapterhub_ttlora_moe.layers import TTLoraLinear
from adapterhub_ttlora_moe.method import split_cores
from adapterhub_ttlora_moe.tensor_train import (balanced_factors, contract, core_shapes,
                                                dense_delta, sequential_contract)
from torch import nn

import adapterhub
from adapterhub.contracts.layers import adapted_layers

# (d_in, d_out, explicit [m_factors, n_factors] or None for the automatic factorisation)
SHAPES = [
    pytest.param(2048, 2048, None, id="q_proj-2048x2048-auto"),
    pytest.param(2048, 2048, [[16, 8, 4, 4], [16, 8, 4, 4]], id="q_proj-2048x2048-reference"),
    pytest.param(2048, 512, [[16, 16, 4, 2], [16, 16, 2]], id="gqa-v_proj-2048to512-reference"),
    pytest.param(2048, 512, None, id="gqa-v_proj-2048to512-auto"),
    pytest.param(384, 1536, None, id="non-square-384to1536"),
    pytest.param(12, 80, [[4, 3], [8, 2, 5]], id="non-square-12to80-odd-factors"),
    pytest.param(97, 6, None, id="prime-97to6"),
]


def _layer(d_in, d_out, factors, r=4, alpha=1.0):
    config = adapterhub.get_method("ttlora").make_config(
        r=r, alpha=alpha, factors={"proj": factors} if factors else {})
    torch.manual_seed(0)
    layer = TTLoraLinear(nn.Linear(d_in, d_out), adapterhub.get_method("ttlora"), config, "proj")
    with torch.no_grad():  # unit-variance paths, so that ΔW x is O(1) for x ~ N(0, 1/d_in)
        for core in layer.cores():
            core.normal_(std=1 / math.sqrt(core.shape[0]))
    return layer


def test_balanced_factors():
    assert balanced_factors(2048, 16) == [16, 16, 8]
    assert balanced_factors(512, 16) == [8, 8, 8]
    assert balanced_factors(2048, 8) == [8, 8, 8, 4]
    assert balanced_factors(16, 16) == [16]
    assert balanced_factors(97 * 4, 16) == [97, 4]
    for d in range(1, 1200):
        for max_factor in (2, 5, 16):
            factors = balanced_factors(d, max_factor)
            assert math.prod(factors) == d
            assert factors == sorted(factors, reverse=True)
            assert all(f <= max_factor or all(f % p for p in range(2, f)) for f in factors)


def test_reference_core_shapes_and_parameters():
    # lanl/TTLoRAMoE, Llama-3.2-1B, rank 5: q 960 and v 1,160 parameters per layer
    q = core_shapes([16, 8, 4, 4], [16, 8, 4, 4], 5)
    v = core_shapes([16, 16, 4, 2], [16, 16, 2], 5)
    assert [s for _, s, _ in q] == [16, 8, 4, 4, 4, 4, 8, 16]
    assert [s for _, s, _ in v] == [16, 16, 4, 2, 2, 16, 16]
    assert q[0] == (1, 16, 5) and q[-1] == (5, 16, 1) and q[3] == (5, 4, 5)
    assert sum(math.prod(s) for s in q) == 960
    assert sum(math.prod(s) for s in v) == 1160


@pytest.mark.parametrize("d_in,d_out,factors", SHAPES)
def test_contraction_equals_dense_delta_forward(d_in, d_out, factors):
    """fp32: the training kernel, the reference's contraction and x·ΔWᵀ agree within 1e-5.

    The input is scaled so that the largest output is 1 (a float64 product is the yardstick).
    """
    layer = _layer(d_in, d_out, factors)
    cores, p = [c.detach() for c in layer.cores()], len(layer.m_factors)
    x = torch.randn(3, 5, d_in, generator=torch.Generator().manual_seed(1))
    exact = x.double() @ dense_delta([c.double() for c in cores[:p]],
                                     [c.double() for c in cores[p:]]).T
    x = x / exact.abs().max().float()
    exact = exact / exact.abs().max()
    delta = layer.delta_weight()
    assert delta.shape == (d_out, d_in) and delta.dtype == torch.float32
    dense = x @ delta.T
    with torch.no_grad():
        out = layer.adapter_forward(x)
        oracle = sequential_contract(x, cores[:p], cores[p:])
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(oracle, dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.double(), exact, atol=1e-5, rtol=0)


def test_dense_delta_follows_reference_index_order():
    """ΔW[o, i] = G_1[:, i_1, :] ⋯ G_p[:, i_p, :] G_{p+1}[:, o_q, :] ⋯ G_{p+q}[:, o_1, :]."""
    m, n = [4, 3, 2], [5, 2]
    cores = [torch.randn(s, dtype=torch.float64) for s in core_shapes(m, n, 3)]
    delta = dense_delta(cores[:3], cores[3:])
    for o in range(10):
        for i in range(24):
            i1, i2, i3 = i % 4, (i // 4) % 3, i // 12
            o1, o2 = o % 5, o // 5
            path = (cores[0][:, i1, :] @ cores[1][:, i2, :] @ cores[2][:, i3, :]
                    @ cores[3][:, o2, :] @ cores[4][:, o1, :])
            assert torch.allclose(delta[o, i], path[0, 0], rtol=1e-12, atol=1e-12)


def test_forward_accepts_any_leading_shape():
    layer = _layer(24, 10, None)
    with torch.no_grad():
        x = torch.randn(2, 3, 4, 24)
        full = layer.adapter_forward(x)
        assert full.shape == (2, 3, 4, 10)
        torch.testing.assert_close(layer.adapter_forward(x[1, 2, 3]), full[1, 2, 3])
        torch.testing.assert_close(layer.adapter_forward(x.reshape(-1, 24)),
                                   full.reshape(-1, 10))
        torch.testing.assert_close(layer(x), layer.base_layer(x) + full)


def test_batched_cores_use_each_samples_own_train():
    torch.manual_seed(0)
    shapes = core_shapes([4, 2], [3, 2], 2)
    experts = [[torch.randn(s) for s in shapes] for _ in range(3)]
    x = torch.randn(3, 7, 8)
    stacked = [torch.stack([e[k] for e in experts]) for k in range(len(shapes))]
    out = contract(x, stacked[:2], stacked[2:])
    for b in range(3):
        torch.testing.assert_close(out[b], contract(x[b], experts[b][:2], experts[b][2:]))


def test_direct_init_is_unit_norm_and_changes_the_output():
    method = adapterhub.get_method("ttlora")
    config = method.make_config(target_modules=["proj"])
    assert not method.identity_at_init(config)
    layer = TTLoraLinear(nn.Linear(64, 32), method, config, "proj")
    for core in layer.cores():
        assert abs(torch.linalg.vector_norm(core).item() - 1) < 1e-5
    assert layer.delta_weight().abs().max() > 0


def test_zero_init_gives_zero_delta_that_then_trains():
    method = adapterhub.get_method("ttlora")
    config = method.make_config(init="zero")
    assert method.identity_at_init(config)
    layer = TTLoraLinear(nn.Linear(64, 32), method, config, "proj")
    assert torch.equal(layer.delta_weight(), torch.zeros(32, 64))
    (layer.adapter_forward(torch.randn(5, 64)) * torch.randn(5, 32)).sum().backward()
    assert layer.cores()[-1].grad.abs().max() > 0


def test_alpha_multiplies_directly():
    a, b = _layer(16, 8, None, r=2, alpha=1.0), _layer(16, 8, None, r=2, alpha=16.0)
    torch.testing.assert_close(b.delta_weight(), 16 * a.delta_weight())


def test_bf16_base_keeps_fp32_cores():
    method = adapterhub.get_method("ttlora")
    base = nn.Linear(32, 16).to(torch.bfloat16)
    layer = TTLoraLinear(base, method, method.make_config(), "proj")
    assert all(c.dtype == torch.float32 for c in layer.cores())
    assert layer(torch.randn(2, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("fields", [
    {"r": 0}, {"alpha": "big"}, {"max_factor": 1}, {"init": "svd"},
    {"factors": {"q": [[16, 8]]}}, {"factors": {"q": [[16, 0], [4]]}},
])
def test_bad_config_is_refused(fields):
    with pytest.raises(adapterhub.ConfigError):
        adapterhub.get_method("ttlora").make_config(fields)


def test_factors_that_do_not_fit_are_refused():
    model = nn.Sequential(nn.Linear(16, 32))
    with pytest.raises(adapterhub.ConfigError, match="d_in=16"):
        adapterhub.attach(model, "ttlora", target_modules=["0"], factors={"0": [[4, 2], [32]]})


def test_malformed_cores_are_refused():
    good = {f"tt_in_{k}": t for k, t in enumerate([torch.zeros(1, 4, 2), torch.zeros(2, 4, 2)])}
    with pytest.raises(adapterhub.FormatError, match="incomplete"):
        split_cores("m", good)
    with pytest.raises(adapterhub.FormatError, match="tensor train"):
        split_cores("m", {**good, "tt_out_0": torch.zeros(3, 8, 1)})
    with pytest.raises(adapterhub.FormatError, match="unexpected"):
        split_cores("m", {**good, "tt_out_0": torch.zeros(2, 8, 1), "lora_A": torch.zeros(1)})
    in_cores, out_cores = split_cores("m", {**good, "tt_out_0": torch.zeros(2, 8, 1)})
    assert len(in_cores) == 2 and len(out_cores) == 1


def test_peft_export_is_refused_clearly(tmp_path):
    from adapterhub.io.formats.peft import write_peft

    model = nn.Sequential(nn.Linear(16, 32))
    adapterhub.attach(model, "ttlora", target_modules=["0"])
    with pytest.raises(adapterhub.ExportError, match="PEFT cannot express the 'ttlora'"):
        write_peft(adapterhub.extract(model), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _llama_1b_on_meta():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def _adapter_params(model):
    return sum(p.numel() for layer in adapted_layers(model).values()
               for p in layer.adapter_parameters())


def test_parameter_counts_on_llama_3_2_1b_shapes():
    qv = ["q_proj", "v_proj"]
    lora = _llama_1b_on_meta()
    adapterhub.attach(lora, "lora", r=16, target_modules=qv)
    assert _adapter_params(lora) == 16 * (4096 + 2560) * 16 == 1_703_936

    auto = _llama_1b_on_meta()
    layers = adapterhub.attach(auto, "ttlora", target_modules=qv)
    assert layers["model.layers.0.self_attn.v_proj"].n_factors == [8, 8, 8]
    assert _adapter_params(auto) == 16 * (1360 + 1120) == 39_680  # 2.33% of LoRA

    reference = _llama_1b_on_meta()
    adapterhub.attach(reference, "ttlora", target_modules=qv, factors={
        "q_proj": [[16, 8, 4, 4], [16, 8, 4, 4]], "v_proj": [[16, 16, 4, 2], [16, 16, 2]]})
    assert _adapter_params(reference) == 33_920
    assert round(100 * 33_920 / 1_703_936, 2) == 1.99


def test_training_forward_never_builds_delta_w():
    """Nothing autograd keeps for the backward pass is as large as the 2048×2048 ΔW."""
    layer = _layer(2048, 2048, None)
    x = torch.randn(4, 2048, requires_grad=True)
    sizes = []

    def keep(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = layer.adapter_forward(x)
    out.sum().backward()
    assert sizes and max(sizes) <= 2048 * 4 < 2048 * 2048
    assert all(core.grad is not None for core in layer.cores())
