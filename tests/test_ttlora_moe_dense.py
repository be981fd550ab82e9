"""Dense training, sparse inference for the TT-LoRA MoE router (DS-MoE): the router learns
from the task loss through every expert and routes top-1 at inference."""

import copy

import pytest
import torch
import torch.nn.functional as F
from adapterhub_ttlora_moe import load_moe, route, train_router
from adapterhub_ttlora_moe.moe import router_of
from adapterhub_ttlora_moe.router import Router
from test_ttlora_moe import TASKS, _bert, _expert, _rows

import adapterhub
from adapterhub.contracts.layers import adapted_layers


def _mse(output, target):
    return F.mse_loss(output.last_hidden_state, target)


def _own_expert_outputs(base, experts, rows, labels):
    """Each row's target: the base model with that row's own expert."""
    out = torch.empty(len(labels), *base(**{k: v[:1] for k, v in rows.items()})
                      .last_hidden_state.shape[1:])
    labels = torch.tensor(labels)
    for e, expert in enumerate(experts):
        model = copy.deepcopy(base)
        adapterhub.load(model, expert)
        with torch.no_grad():
            out[labels == e] = model(**{k: v[labels == e] for k, v in rows.items()}
                                     ).last_hidden_state
    return out


def _train_dense(base, experts, **kw):
    labels = [t for t in range(len(TASKS)) for _ in range(40)]
    rows = _rows(labels, seed=1)
    targets = _own_expert_outputs(base, experts, rows, labels)
    return train_router(base, experts, rows, labels, epochs=30, lr=3e-2, pooling="mean",
                        router_training="dense", task_targets=targets, loss_fn=_mse,
                        quiet=True, **kw)


def _held_out_accuracy(base, experts, package):
    tasks = [t for t in range(3) for _ in range(20)]
    model = copy.deepcopy(base)
    load_moe(model, package, experts)
    with torch.no_grad():
        chosen = route(model, **_rows(tasks, seed=99))
    return (chosen == torch.tensor(tasks)).float().mean().item()


@pytest.fixture(scope="module")
def dense():
    base = _bert()
    experts = [_expert(base, seed, name) for seed, name in enumerate(TASKS)]
    return base, experts, _train_dense(base, experts)


def test_dense_router_learns_routing_from_the_task_loss_alone(dense):
    """No label enters the loss; the router still learns which expert fits each input
    (less sharply than from labels: see the benchmark)."""
    base, experts, package = dense
    assert package.config.router_training == "dense"
    assert package.manifest.metrics["router_train_task_loss"] < 1e-3
    assert _held_out_accuracy(base, experts, package) >= 0.8


def test_dense_router_with_the_label_loss_routes_like_noisy_topk(dense):
    base, experts, _ = dense
    package = _train_dense(base, experts, router_loss_weight=1.0)
    assert _held_out_accuracy(base, experts, package) >= 0.95


def test_dense_router_routes_top1_at_inference(dense):
    base, experts, package = dense
    model = copy.deepcopy(base)
    load_moe(model, package, experts)
    with torch.no_grad():
        model(**_rows([0, 1, 2], seed=5))
    gates = router_of(model).last_gates
    assert torch.equal(gates, F.one_hot(gates.argmax(-1), 3).float())


def test_dense_training_leaves_the_model_as_it_was(dense):
    base, _, _ = dense
    assert not adapted_layers(base)
    assert not hasattr(base, "ttlora_router")
    assert not base._forward_pre_hooks and not base._forward_hooks


def test_dense_gates_while_training_only():
    torch.manual_seed(0)
    router = Router(8, 4, dense=True).train()
    pooled, mean = torch.randn(5, 8), torch.randn(5, 8)
    gates = router.gates(router.logits(pooled, mean))
    assert (gates > 0).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(5))
    assert torch.equal(router.logits(pooled, mean), router.logits(pooled, mean)), \
        "a dense router adds no gating noise"
    router.eval()
    gates = router.gates(router.logits(pooled, mean))
    assert torch.equal(gates, F.one_hot(gates.argmax(-1), 4).float())


def test_dense_training_needs_task_targets():
    base = _bert()
    experts = [_expert(base, seed, name) for seed, name in enumerate(TASKS)]
    with pytest.raises(adapterhub.ConfigError, match="task's targets"):
        train_router(base, experts, _rows([0, 1, 2], seed=1), [0, 1, 2],
                     router_training="dense", quiet=True)
    with pytest.raises(adapterhub.ConfigError, match="router_training"):
        train_router(base, experts, _rows([0, 1, 2], seed=1), [0, 1, 2],
                     router_training="sparse", quiet=True)
    with pytest.raises(adapterhub.ConfigError, match="for a dense router"):
        train_router(base, experts, _rows([0, 1, 2], seed=1), [0, 1, 2],
                     task_targets=torch.zeros(3), quiet=True)
