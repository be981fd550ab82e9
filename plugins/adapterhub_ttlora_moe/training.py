"""Training entry points: one ``ttlora`` expert, and a router over frozen experts.

Both take a model, in-memory data and hyper-parameters and return an
:class:`~adapterhub.AdapterPackage`; the model is left as it was. ``inputs`` is a tensor (the
model is called as ``model(x)``) or a mapping of tensors (``model(**batch)``, e.g. ``input_ids``
and ``attention_mask``), all with the same first dimension.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub import AdapterPackage, ConfigError
from adapterhub.plugin_api import progress
from adapterhub_ttlora_moe.experts import ExpertSource, expert_name, load_experts, stack_experts
from adapterhub_ttlora_moe.moe import moe_package
from adapterhub_ttlora_moe.router import Router, base_hidden

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def train_expert(model: nn.Module, inputs: Inputs, targets: torch.Tensor, *,
                 config: Any = None, loss_fn: LossFn | None = None, epochs: int = 1,
                 lr: float = 5e-3, batch_size: int = 32, seed: int = 0,
                 base: str | os.PathLike[str] | None = None,
                 labels: dict[str, Any] | None = None, quiet: bool = False,
                 **config_fields: Any) -> AdapterPackage:
    """Train one ``ttlora`` adapter on ``(inputs, targets)`` and return it as a package.

    ``config`` (a :class:`TTLoraConfig`, a dict, or keyword fields) sets rank, α, targets and
    factorisation. ``loss_fn(output, targets)`` defaults to cross-entropy on ``output.logits``
    (or the output tensor) for integer targets and mean squared error for float targets.
    Adam at ``lr`` (TT-LoRA MoE trains experts at 5e-3). Label an expert with
    ``labels={"name": "sst2"}`` to give it its name in a MoE. The adapter is removed from
    ``model`` afterwards.
    """
    import adapterhub

    count = _rows(inputs, targets)
    loss_fn = loss_fn or default_loss
    was_training = model.training
    torch.manual_seed(seed)
    adapterhub.attach(model, "ttlora", config, **config_fields)
    try:
        optimizer = torch.optim.Adam(adapterhub.param_groups(model, lr=lr))
        order = torch.Generator().manual_seed(seed)
        per_epoch = math.ceil(count / batch_size)
        losses: list[float] = []
        model.train()
        with progress(total=epochs * per_epoch, desc="ttlora expert", unit="step",
                      disable=quiet) as bar:
            for _ in range(epochs):
                for index in torch.randperm(count, generator=order).split(batch_size):
                    optimizer.zero_grad()
                    loss = loss_fn(_call(model, _take(inputs, index)), targets[index])
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                    bar.update()
                    bar.set_postfix(loss=f"{losses[-1]:.4g}")
        model.eval()
        last_epoch = losses[-per_epoch:]
        package = adapterhub.extract(model, base=base, labels=labels, metrics={
            "train_loss": sum(last_epoch) / len(last_epoch), "steps": len(losses),
            "epochs": epochs, "lr": lr, "batch_size": batch_size})
    finally:
        adapterhub.unload(model, merge=False)
        model.train(was_training)
    return package


def train_router(model: nn.Module, experts: Iterable[ExpertSource], inputs: Inputs,
                 expert_labels: Sequence[str | int] | torch.Tensor, *,
                 names: Sequence[str] | None = None, epochs: int = 30, lr: float = 1e-3,
                 batch_size: int = 32, seed: int = 0, labels: dict[str, Any] | None = None,
                 quiet: bool = False, task_targets: torch.Tensor | None = None,
                 loss_fn: LossFn | None = None, router_loss_weight: float = 0.0,
                 **config_fields: Any) -> AdapterPackage:
    """Train a router over frozen ``ttlora`` experts; return the ``ttlora_moe`` version.

    ``experts`` are the expert versions (packages or package directories), in router order;
    ``expert_labels`` give each input row its expert (a name or an index). ``names`` default
    to each expert's ``name``/``task`` label. ``config_fields`` are the remaining
    :class:`TTLoraMoeConfig` fields (``top_k``, ``noisy_gating``, ``pooling``,
    ``router_training``).

    The router's input is the frozen base model's pooled last hidden state, computed once per
    row (the base is frozen, so it does not change between epochs). Adam at ``lr``.

    - ``router_training="noisy_topk"`` (default): TT-LoRA MoE's router loss, cross-entropy of
      the noisy logits against the expert label. The reference adds the task loss, but with
      top-1 gates (exactly one-hot) that term has zero gradient with respect to the router,
      so it is left out.
    - ``router_training="dense"`` (DS-MoE): the model runs with every expert weighted by the
      softmax of the router's logits, and the router learns from the task loss
      ``loss_fn(output, task_targets)`` (default: cross-entropy for integer targets, MSE for
      float ones) plus ``router_loss_weight`` × the cross-entropy against the expert labels
      (default 0: the labels then only measure accuracy). Inference routes top-k either way.
    """
    from adapterhub.plugin_api import get_method

    packages = load_experts(experts)
    stack_experts(packages)  # refuse experts that cannot share a MoE before any work
    names = list(names) if names is not None else [expert_name(p, i)
                                                   for i, p in enumerate(packages)]
    config = get_method("ttlora_moe").make_config(
        {"experts": [p.digest for p in packages], "expert_names": names, **config_fields})
    targets = _expert_targets(config, expert_labels)
    count = _rows(inputs, targets)
    dense = config.router_training == "dense"
    if dense and task_targets is None:
        raise ConfigError("a dense router learns from the task loss through the experts, so "
                          "it needs the task's targets",
                          hint="Pass task_targets= (and loss_fn= unless cross-entropy or MSE "
                               "fits), or use router_training='noisy_topk'")
    if dense:
        _rows(inputs, task_targets)
    elif task_targets is not None or loss_fn is not None or router_loss_weight:
        raise ConfigError("task_targets, loss_fn and router_loss_weight are for a dense "
                          "router; a noisy top-k router learns the expert labels only",
                          hint="Pass router_training='dense', or drop them")
    torch.manual_seed(seed)

    was_training = model.training
    model.eval()
    router: Router | None = None
    pooled, mean = [], []
    try:
        for index in progress(torch.arange(count).split(batch_size), desc="router inputs",
                              unit="batch", disable=quiet):
            args, kwargs = _call_args(_take(inputs, index))
            hidden, mask = base_hidden(model, args, kwargs)
            if router is None:
                router = Router.for_config(config, hidden.shape[-1]).to(hidden.device)
            features = router.features(hidden, mask)
            pooled.append(features[0])
            mean.append(features[1])
    finally:
        model.train(was_training)
    assert router is not None
    features = torch.cat(pooled), torch.cat(mean)
    targets = targets.to(features[0].device)
    run = _Run(epochs, lr, batch_size, torch.Generator().manual_seed(seed), quiet)
    if dense:
        metrics = _train_dense(model, router, config, packages, inputs, task_targets, features,
                               targets, loss_fn or default_loss, router_loss_weight, run)
    else:
        metrics = _train_noisy(router, features, targets, run)
    router.eval()
    with torch.no_grad():
        accuracy = (router.logits(*features).argmax(-1) == targets).float().mean()
    return moe_package(router, config, packages, labels=labels, metrics={
        "router_train_accuracy": accuracy.item(), **metrics,
        "epochs": epochs, "lr": lr, "batch_size": batch_size})


@dataclass
class _Run:
    epochs: int
    lr: float
    batch_size: int
    order: torch.Generator
    quiet: bool

    def batches(self, count: int, desc: str) -> Iterator[torch.Tensor]:
        for _ in progress(range(self.epochs), desc=desc, unit="epoch", disable=self.quiet):
            yield from torch.randperm(count, generator=self.order).split(self.batch_size)


def _train_noisy(router: Router, features: tuple[torch.Tensor, torch.Tensor],
                 targets: torch.Tensor, run: _Run) -> dict[str, float]:
    """The reference's router loss: cross-entropy of the noisy logits against the labels."""
    optimizer = torch.optim.Adam(router.parameters(), lr=run.lr)
    router.train()
    loss = torch.zeros(())
    for index in run.batches(len(targets), "router"):
        optimizer.zero_grad()
        loss = F.cross_entropy(router.logits(features[0][index], features[1][index]),
                               targets[index])
        loss.backward()
        optimizer.step()
    return {"router_train_loss": loss.item()}


def _train_dense(model: nn.Module, router: Router, config: Any,
                 packages: list[AdapterPackage], inputs: Inputs, task_targets: torch.Tensor,
                 features: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor,
                 loss_fn: LossFn, label_weight: float, run: _Run) -> dict[str, float]:
    """DS-MoE's dense training: every expert in every forward, weighted by the softmax of the
    router's logits, and the task loss back through the frozen experts into the router.

    The MoE is attached to ``model`` for the duration; the router's gates come from the
    features computed once (the routing hook, which would run the base model again, is held
    off), and the trained values are copied into ``router``.
    """
    from adapterhub_ttlora_moe.moe import attach_moe, detach_moe, moe_layers, router_of

    was_training = model.training
    attach_moe(model, config, packages, router.tensors())
    live = router_of(model)
    try:
        model.eval()
        live.train()
        live.busy = True  # gates are set below, from the precomputed features
        layers = moe_layers(model)
        optimizer = torch.optim.Adam(live.parameters(), lr=run.lr)
        task_loss = torch.zeros(())
        for index in run.batches(len(targets), "router (dense)"):
            optimizer.zero_grad()
            logits = live.logits(features[0][index], features[1][index])
            gates = live.gates(logits)
            for layer in layers:
                layer.gates = gates
            task_loss = loss_fn(_call(model, _take(inputs, index)),
                                task_targets[index].to(gates.device))
            loss = task_loss + label_weight * F.cross_entropy(logits, targets[index]) \
                if label_weight else task_loss
            loss.backward()
            optimizer.step()
        router.load_tensors({name: t.detach() for name, t in live.tensors().items()})
    finally:
        detach_moe(model)
        model.train(was_training)
    return {"router_train_task_loss": task_loss.item()}


def default_loss(output: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer targets, mean squared error for float targets."""
    prediction = getattr(output, "logits", output)
    if not isinstance(prediction, torch.Tensor):
        raise ConfigError(f"the model returned {type(output).__name__}; pass loss_fn to say "
                          f"how to score it")
    if targets.is_floating_point():
        return F.mse_loss(prediction, targets)
    return F.cross_entropy(prediction.reshape(-1, prediction.shape[-1]), targets.reshape(-1))


def _expert_targets(config: Any, expert_labels: Sequence[str | int] | torch.Tensor
                    ) -> torch.Tensor:
    if isinstance(expert_labels, torch.Tensor):
        expert_labels = expert_labels.tolist()
    return torch.tensor([config.expert_index(label) for label in expert_labels],
                        dtype=torch.long)


def _rows(inputs: Inputs, targets: torch.Tensor) -> int:
    tensors = list(inputs.values()) if isinstance(inputs, Mapping) else [inputs]
    counts = {len(t) for t in tensors} | {len(targets)}
    if len(counts) != 1:
        raise ConfigError(f"inputs and targets must have the same number of rows; got "
                          f"{sorted(counts)}")
    count = counts.pop()
    if not count:
        raise ConfigError("no training rows")
    return count


def _take(inputs: Inputs, index: torch.Tensor) -> Inputs:
    if isinstance(inputs, Mapping):
        return {key: value[index] for key, value in inputs.items()}
    return inputs[index]


def _call_args(batch: Inputs) -> tuple[tuple, dict[str, Any]]:
    return ((), dict(batch)) if isinstance(batch, Mapping) else ((batch,), {})


def _call(model: nn.Module, batch: Inputs) -> Any:
    args, kwargs = _call_args(batch)
    return model(*args, **kwargs)
