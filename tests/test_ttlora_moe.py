"""TT-LoRA MoE on a random-init BERT: routing per sample, expert loading, storage, merge refusal."""

import copy

import pytest
import torch
import torch.nn.functional as F
from adapterhub_ttlora_moe import (load_experts, load_moe, route, select_expert, train_expert,
                                   train_router)
from adapterhub_ttlora_moe.layers import TTLoraMoeLinear
from adapterhub_ttlora_moe.router import Router, pool

import adapterhub
from adapterhub.contracts.layers import adapted_layers

TASKS = ["alpha", "beta", "gamma"]
SEQ = 8


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=4 + 20 * len(TASKS), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(config).eval()


def _rows(task_ids, seed):
    """Sequences whose tokens come from their task's own slice of the vocabulary, right-padded."""
    g = torch.Generator().manual_seed(seed)
    tasks = torch.as_tensor(task_ids)
    ids = 4 + 20 * tasks[:, None] + torch.randint(0, 20, (len(tasks), SEQ), generator=g)
    lengths = torch.randint(3, SEQ + 1, (len(tasks),), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def _expert(base, seed, name, **fields):
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    adapterhub.attach(model, "ttlora", **{"target_modules": ["query", "value"], "r": 2,
                                          "alpha": 4.0, **fields})
    return adapterhub.extract(model, labels={"name": name})


@pytest.fixture(scope="module")
def moe():
    base = _bert()
    experts = [_expert(base, seed, name) for seed, name in enumerate(TASKS)]
    labels = [t for t in range(len(TASKS)) for _ in range(40)]
    package = train_router(base, experts, _rows(labels, seed=1), labels, epochs=40, lr=1e-2,
                           pooling="mean", quiet=True)
    return base, experts, package


def test_router_version_stores_router_and_lists_experts_as_parents(moe, tmp_path):
    base, experts, package = moe
    assert package.method.name == "ttlora_moe"
    assert set(package.tensors) == {"router.gate", "router.noise", "router.noise_bias"}
    assert package.tensors["router.gate"].shape == (3, 32)
    assert package.manifest.parents == tuple(e.digest for e in experts)
    assert package.config.experts == [e.digest for e in experts]
    assert package.config.expert_names == TASKS
    assert package.manifest.base_model["modules"] == experts[0].manifest.base_model["modules"]
    assert package.manifest.base_model["fingerprint"] == \
        experts[0].manifest.base_model["fingerprint"]
    assert package.manifest.metrics["router_train_accuracy"] == 1.0
    package.save(tmp_path / "moe")
    assert adapterhub.AdapterPackage.load(tmp_path / "moe").digest == package.digest


def test_mixed_batch_routes_each_sample_to_its_own_expert(moe):
    base, experts, package = moe
    tasks = [2, 0, 1, 1, 0, 2, 1]
    batch = _rows(tasks, seed=7)  # held-out rows
    model = copy.deepcopy(base)
    layers = load_moe(model, package, experts)
    assert layers and all(isinstance(layer, TTLoraMoeLinear) for layer in layers.values())
    with torch.no_grad():
        chosen = route(model, **batch)
        out = model(**batch).last_hidden_state
    assert chosen.tolist() == tasks
    assert all(layer.gates is None for layer in layers.values())  # cleared after the call
    for e, expert in enumerate(experts):
        single = copy.deepcopy(base)
        adapterhub.load(single, expert)
        with torch.no_grad():
            alone = single(**batch).last_hidden_state
        rows = [b for b, t in enumerate(tasks) if t == e]
        torch.testing.assert_close(out[rows], alone[rows], atol=1e-5, rtol=0)
        others = [b for b in range(len(tasks)) if b not in rows]
        assert (out[others] - alone[others]).abs().max() > 1e-3


def test_held_out_routing_accuracy(moe):
    base, experts, package = moe
    tasks = [t for t in range(3) for _ in range(20)]
    model = copy.deepcopy(base)
    load_moe(model, package, experts)
    with torch.no_grad():
        chosen = route(model, **_rows(tasks, seed=99))
    assert (chosen == torch.tensor(tasks)).float().mean() >= 0.95


def test_loading_from_directories(moe, tmp_path):
    base, experts, package = moe
    package.save(tmp_path / "moe")
    dirs = [e.save(tmp_path / name) for e, name in zip(experts, TASKS)]
    assert [p.digest for p in load_experts(dirs)] == [e.digest for e in experts]
    model = copy.deepcopy(base)
    load_moe(model, tmp_path / "moe", reversed(dirs))  # any order: matched by digest
    batch = _rows([1, 0], seed=3)
    with torch.no_grad():
        assert route(model, **batch).tolist() == [1, 0]


def test_missing_expert_is_named_and_nothing_changes(moe):
    base, experts, package = moe
    model = copy.deepcopy(base)
    with pytest.raises(adapterhub.AdapterNotFoundError, match=experts[2].digest):
        load_moe(model, package, experts[:2])
    with pytest.raises(adapterhub.AdapterNotFoundError, match=experts[0].digest):
        adapterhub.load(model, package)
    assert not adapted_layers(model) and not hasattr(model, "ttlora_router")


def test_experts_must_be_compatible_ttlora_versions(moe):
    base, experts, _ = moe
    model = copy.deepcopy(base)
    adapterhub.attach(model, "lora", target_modules=["query", "value"])
    lora = adapterhub.extract(model)
    with pytest.raises(adapterhub.ConfigError, match="'lora' adapter"):
        load_experts([lora])
    other_rank = _expert(base, 5, "delta", r=3)
    rows = _rows([0, 1], seed=2)
    with pytest.raises(adapterhub.ConfigError, match="same rank and factorisation"):
        train_router(base, [experts[0], other_rank], rows, [0, 1], quiet=True)
    with pytest.raises(adapterhub.ConfigError, match="no expert 'zeta'"):
        train_router(base, experts, rows, ["alpha", "zeta"], quiet=True)


def test_merging_a_moe_is_refused_unless_one_expert_is_picked(moe):
    base, experts, package = moe
    weight = torch.zeros(32, 32)
    path = "encoder.layer.0.attention.self.query"
    with pytest.raises(adapterhub.MergeError, match="no single ΔW") as refused:
        package.method.merge(weight, path, {}, package.config)
    assert "--expert NAME" in refused.value.one_line() and "beta" in refused.value.one_line()
    model = copy.deepcopy(base)
    layers = load_moe(model, package, experts)
    with pytest.raises(adapterhub.MergeError, match="no single ΔW"):
        layers[path].merge()
    with pytest.raises(adapterhub.MergeError):
        adapterhub.unload(model, merge=True)

    picked = select_expert(package, experts, "beta")
    assert picked.digest == experts[1].digest
    assert select_expert(package, experts, 2).digest == experts[2].digest
    tensors = picked.method.group_tensors(picked.tensors)[path]
    merged = picked.method.merge(weight, path, tensors, picked.config)
    assert merged.abs().max() > 0
    with pytest.raises(adapterhub.ConfigError, match="no expert 'zeta'"):
        select_expert(package, experts, "zeta")
    with pytest.raises(adapterhub.AdapterNotFoundError, match=experts[1].digest):
        select_expert(package, [experts[0]], "beta")
    with pytest.raises(adapterhub.MergeError, match="needs a ttlora_moe"):
        select_expert(experts[0], experts, 0)


def test_extracting_a_moe_is_refused(moe):
    base, experts, package = moe
    model = copy.deepcopy(base)
    load_moe(model, package, experts)
    with pytest.raises(adapterhub.ConfigError, match="cannot be extracted") as refused:
        adapterhub.extract(model)
    assert "moe_package" in refused.value.one_line()


def test_attach_fresh_moe_is_refused():
    with pytest.raises(adapterhub.ConfigError, match="not attached fresh") as refused:
        adapterhub.attach(_bert(), "ttlora_moe", experts=["sha256:" + "0" * 64],
                          expert_names=["a"])
    assert "train_router" in refused.value.one_line()


@pytest.mark.parametrize("fields", [
    {}, {"experts": ["nope"], "expert_names": ["a"]},
    {"experts": ["sha256:" + "0" * 64], "expert_names": []},
    {"experts": ["sha256:" + "0" * 64], "expert_names": ["a"], "top_k": 2},
    {"experts": ["sha256:" + "0" * 64], "expert_names": ["a"], "pooling": "max"},
])
def test_bad_moe_config_is_refused(fields):
    with pytest.raises(adapterhub.ConfigError):
        adapterhub.get_method("ttlora_moe").make_config(fields)


def test_unloading_without_merge_restores_the_base(moe):
    base, experts, package = moe
    model = copy.deepcopy(base)
    load_moe(model, package, experts)
    adapterhub.unload(model, merge=False)
    batch = _rows([0, 2], seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state,
                                   base(**batch).last_hidden_state, atol=0, rtol=0)
    assert not hasattr(model, "ttlora_router")


def test_top_k_gates_and_noise():
    torch.manual_seed(0)
    pooled, mean = torch.randn(6, 8), torch.randn(6, 8)
    top1 = Router(8, 4).eval()
    gates = top1.gates(top1.logits(pooled, mean))
    assert torch.equal(gates, F.one_hot(gates.argmax(-1), 4).float())
    top2 = Router(8, 4, top_k=2).eval()
    gates = top2.gates(top2.logits(pooled, mean))
    assert ((gates > 0).sum(-1) == 2).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(6))
    assert torch.equal(top1.logits(pooled, mean), top1.logits(pooled, mean))
    top1.train()
    assert not torch.equal(top1.logits(pooled, mean), top1.logits(pooled, mean))
    top1.noisy = False
    assert torch.equal(top1.logits(pooled, mean), top1.eval().logits(pooled, mean))


def test_pooling_last_non_pad_token_and_mean():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right, left = [1, 1, 1, 0], [0, 1, 1, 1]
    mask = torch.tensor([right, left])
    assert pool(hidden, mask, "last").flatten().tolist() == [2.0, 7.0]
    assert pool(hidden, mask, "mean").flatten().tolist() == [1.0, 6.0]
    assert pool(hidden, None, "last").flatten().tolist() == [3.0, 7.0]


def test_train_expert_learns_and_leaves_the_model_as_it_was():
    base = _bert()
    teacher = _expert(base, 11, "teacher", r=2, alpha=16.0)
    rows = _rows([0] * 64, seed=5)
    with torch.no_grad():
        model = copy.deepcopy(base)
        adapterhub.load(model, teacher)
        targets = model(**rows).last_hidden_state
        before = F.mse_loss(base(**rows).last_hidden_state, targets).item()
    state = {k: v.clone() for k, v in base.state_dict().items()}

    def loss_fn(output, target):
        return F.mse_loss(output.last_hidden_state, target)

    package = train_expert(base, rows, targets, loss_fn=loss_fn, epochs=6, lr=2e-2,
                           batch_size=16, quiet=True, target_modules=["query", "value"], r=2,
                           labels={"name": "alpha"})
    assert package.method.name == "ttlora" and package.manifest.labels == {"name": "alpha"}
    assert not adapted_layers(base)
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())
    student = copy.deepcopy(base)
    adapterhub.load(student, package)
    with torch.no_grad():
        after = F.mse_loss(student(**rows).last_hidden_state, targets).item()
    assert after < 0.5 * before
