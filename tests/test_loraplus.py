"""LoRA+: PEFT's four optimizer groups, their learning rates, and ratio=1 being plain LoRA."""

import json

import pytest
import torch
from torch import nn

import adapterhub
from adapterhub.io.formats.peft import write_peft
from adapterhub.testing import TinyMLP


class EmbMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.lin0 = nn.Linear(16, 32)
        self.lin1 = nn.Linear(32, 16)

    def forward(self, ids):
        return self.lin1(self.lin0(self.emb(ids)))


def shapes(group):
    return sorted(tuple(p.shape) for p in group["params"])


def test_groups_membership_and_learning_rates():
    torch.manual_seed(0)
    model = EmbMLP()
    adapterhub.attach(model, "loraplus", r=4, target_modules=["emb", "lin0", "lin1"],
                      loraplus_lr_ratio=16, loraplus_weight_decay=0.1)
    groups = {g["name"]: g for g in adapterhub.param_groups(model, lr=1e-3)}
    assert list(groups) == ["groupA", "embedding", "groupB", "groupB_no_decay"]
    assert shapes(groups["groupA"]) == [(4, 16), (4, 32)]  # lora_A of lin0, lin1
    assert shapes(groups["embedding"]) == [(4, 20), (16, 4)]  # lora_embedding_A, _B
    assert shapes(groups["groupB"]) == [(16, 4), (32, 4)]  # lora_B of lin1, lin0
    assert groups["groupB_no_decay"]["params"] == []
    assert {k: (g["lr"], g["weight_decay"]) for k, g in groups.items()} == {
        "groupA": (1e-3, 0.1), "embedding": (1e-6, 0.1), "groupB": (16e-3, 0.1),
        "groupB_no_decay": (16e-3, 0.0)}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)  # every adapter tensor exactly once


def test_groups_match_peft_create_loraplus_optimizer():
    import peft
    from peft.optimizers import create_loraplus_optimizer

    torch.manual_seed(0)
    ours = EmbMLP()
    adapterhub.attach(ours, "loraplus", r=4, target_modules=["emb", "lin0", "lin1"],
                      loraplus_lr_ratio=8, loraplus_lr_embedding=1e-5,
                      loraplus_weight_decay=0.05)
    mine = torch.optim.AdamW(adapterhub.param_groups(ours, lr=2e-3))
    theirs_model = peft.get_peft_model(EmbMLP(), peft.LoraConfig(
        r=4, target_modules=["emb", "lin0", "lin1"]))
    theirs = create_loraplus_optimizer(theirs_model, torch.optim.AdamW, lr=2e-3,
                                       loraplus_lr_ratio=8, loraplus_lr_embedding=1e-5,
                                       loraplus_weight_decay=0.05)
    summary = [[(g["lr"], g["weight_decay"], shapes(g)) for g in opt.param_groups]
               for opt in (mine, theirs)]
    assert summary[0] == summary[1]


def test_one_dimensional_tensors_get_boosted_lr_without_decay():
    model = TinyMLP.build()
    layers = adapterhub.attach(model, "loraplus", r=2, target_modules=["lin0"],
                               loraplus_weight_decay=0.1)
    layers["lin0"].register_parameter("lora_scale", nn.Parameter(torch.ones(32)))
    groups = {g["name"]: g for g in adapterhub.param_groups(model, lr=1.0)}
    assert shapes(groups["groupB_no_decay"]) == [(32,)]
    assert (groups["groupB_no_decay"]["lr"], groups["groupB_no_decay"]["weight_decay"]) \
        == (16.0, 0.0)


def test_overrides_and_refusals():
    model = TinyMLP.build()
    adapterhub.attach(model, "loraplus", r=2, target_modules=["lin0"])
    groups = adapterhub.param_groups(model, lr=0.5, loraplus_lr_ratio=4, foreach=False)
    assert [g["lr"] for g in groups] == [0.5, 1e-6, 2.0, 2.0]
    assert all(g["foreach"] is False for g in groups)
    with pytest.raises(adapterhub.ConfigError, match="loraplus_weight_decay"):
        adapterhub.param_groups(model, lr=0.5, weight_decay=0.1)
    with pytest.raises(adapterhub.ConfigError, match="loraplus_lr_ratio"):
        adapterhub.attach(TinyMLP.build(), "loraplus", target_modules=["lin0"],
                          loraplus_lr_ratio=-2)


def _train(method, steps, **fields):
    torch.manual_seed(0)
    model = TinyMLP.build()
    torch.manual_seed(1)
    adapterhub.attach(model, method, r=4, lora_alpha=8, target_modules=["lin0", "lin1"],
                      **fields)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    y = torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(adapterhub.param_groups(model, lr=1e-2))
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model


def test_ratio_one_reproduces_lora_exactly():
    lora = _train("lora", 20)
    plus = _train("loraplus", 20, loraplus_lr_ratio=1)
    lora_state, plus_state = lora.state_dict(), plus.state_dict()
    assert lora_state.keys() == plus_state.keys()
    for key, value in lora_state.items():
        assert torch.equal(value, plus_state[key]), key
    boosted = _train("loraplus", 20, loraplus_lr_ratio=16).state_dict()
    assert not torch.equal(boosted["lin0.lora_B"], lora_state["lin0.lora_B"])


def test_b_moves_ratio_times_faster_on_the_first_adam_step():
    # B starts at zero, so step 1 changes B only; Adam's first step moves each entry by ~lr.
    model = _train("loraplus", 1, loraplus_lr_ratio=16)
    step = model.lin0.lora_B.detach().abs().max().item()
    assert step == pytest.approx(16e-2, rel=1e-3)
    lora_step = _train("lora", 1).lin0.lora_B.detach().abs().max().item()
    assert lora_step == pytest.approx(1e-2, rel=1e-3)


def test_exports_as_a_plain_peft_lora(tmp_path):
    model = _train("loraplus", 3)
    package = adapterhub.extract(model)
    assert package.manifest.method["name"] == "loraplus"
    assert package.manifest.method["config"]["loraplus_lr_ratio"] == 16
    write_peft(package, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert not [key for key in config if key.startswith("loraplus")]
