"""LoRA plugin details: inits, dropout, targeting, config validation."""

import math

import pytest
import torch
from torch import nn

import adapterhub
from adapterhub.testing import TinyMLP


def lora_layers(**config):
    model = TinyMLP.build()
    return model, adapterhub.attach(model, "lora", **{"target_modules": ["lin0", "lin1"],
                                                      **config})


def test_default_init_is_kaiming_a_zero_b():
    _, layers = lora_layers(r=4)
    layer = layers["lin0"]
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(16)  # kaiming_uniform(a=√5) on fan_in 16
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 4


def test_gaussian_init_std():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512))
    layer = adapterhub.attach(model, "lora", r=4, init_lora_weights="gaussian",
                              target_modules=["0"])["0"]
    assert abs(layer.lora_A.std().item() - 1 / 4) < 0.01
    assert torch.count_nonzero(layer.lora_B) == 0


def test_random_init_changes_output():
    model, _ = lora_layers(r=4, init_lora_weights=False)
    x = torch.randn(3, 16)
    assert not torch.allclose(model(x), TinyMLP.build()(x))


def test_scaling_rules():
    _, layers = lora_layers(r=4, lora_alpha=8)
    assert layers["lin0"].scaling == 2.0
    _, layers = lora_layers(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"lin1": 16},
                            alpha_pattern={"lin1": 2})
    assert layers["lin0"].scaling == 4.0 and layers["lin1"].r == 16
    assert layers["lin1"].scaling == 2 / 4


def test_dropout_only_in_training():
    model, _ = lora_layers(r=4, lora_dropout=0.5, init_lora_weights=False)
    x = torch.randn(8, 16)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_regex_and_all_linear_targets():
    model = TinyMLP.build()
    layers = adapterhub.attach(model, "lora", r=2, target_modules=r"lin\d")
    assert sorted(layers) == ["lin0", "lin1"]
    model = TinyMLP.build()
    assert sorted(adapterhub.attach(model, "lora", target_modules="all-linear")) == \
        ["head", "lin0", "lin1"]


def test_targets_that_match_nothing_or_the_wrong_layer():
    with pytest.raises(adapterhub.TargetError, match="matched no module.*lin0"):
        lora_layers(target_modules=["q_proj"])
    with pytest.raises(adapterhub.TargetError, match="ReLU, which the 'lora' method cannot"):
        lora_layers(target_modules=["act"])
    with pytest.raises(adapterhub.TargetError, match="no default target modules"):
        lora_layers(target_modules=None)


def test_attach_twice_adapts_nothing_new():
    model, _ = lora_layers(r=2)
    with pytest.raises(adapterhub.TargetError, match="matched no module"):
        adapterhub.attach(model, "lora", target_modules=["lin0"])


@pytest.mark.parametrize("fields, message", [
    ({"r": 0}, "`r` must be a positive integer; got 0"),
    ({"lora_dropout": 1.5}, "lora_dropout"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights"),
    ({"rank": 4}, "unknown config field"),
])
def test_config_errors_name_the_value(fields, message):
    with pytest.raises(adapterhub.ConfigError, match=message):
        lora_layers(**fields)


def test_config_from_cli_strings():
    method = adapterhub.get_method("lora")
    config = method.Config.from_strings(["r=16", "lora_alpha=32", "target_modules=q,v",
                                         "use_rslora=true"])
    assert (config.r, config.lora_alpha, config.target_modules, config.use_rslora) == \
        (16, 32, ["q", "v"], True)


def test_embedding_lora_delta_matches_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 12))
    layer = adapterhub.attach(model, "lora", r=3, init_lora_weights=False,
                              target_modules=["0"])["0"]
    ids = torch.tensor([[1, 5, 49]])
    out = model(ids)
    merged = layer.base_layer.weight + layer.delta_weight()
    torch.testing.assert_close(out, merged[ids])


def test_bf16_base_trains_fp32_adapter_and_casts_back():
    model = TinyMLP.build().to(torch.bfloat16)
    layers = adapterhub.attach(model, "lora", r=2, target_modules=["lin0"])
    assert layers["lin0"].lora_A.dtype == torch.float32
    assert model(torch.randn(2, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
    package = adapterhub.extract(model)
    assert package.manifest.tensors["lin0.lora_A"].dtype == "F32"
