"""Adapted layers (the modules a method puts in place of base layers) and the layers of a
model an adapter targets."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adapterhub.contracts.numerics import fold_delta
from adapterhub.errors import FormatError, TargetError

if TYPE_CHECKING:
    from adapterhub.contracts.config import MethodConfig
    from adapterhub.contracts.method import AdapterMethod


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapter tensors train in fp32 on a 16-bit base (PEFT's ``autocast_adapter_dtype``)."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


class AdaptedLayer(nn.Module):
    """A frozen ``base_layer`` plus a method's trainable adapter tensors.

    Subclasses create their parameters in ``__init__`` and implement ``adapter_forward`` (the
    adapter's contribution to the output). Merging goes through the method's merge kernel
    (:meth:`AdapterMethod.delta_weight`), so training and deployment share one definition of ΔW.
    """

    def __init__(self, base_layer: nn.Module, method: AdapterMethod, config: MethodConfig,
                 path: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        for param in base_layer.parameters():
            param.requires_grad_(False)
        # Plain attributes (not submodules): the method object and config are shared.
        self.method = method
        self.adapter_config = config
        self.path = path
        self.kind = layer_kind(base_layer)
        self.merged = False
        self.disabled = False

    # -- what subclasses provide ------------------------------------------------------------

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's additive contribution to ``base_layer(x)``."""
        raise NotImplementedError

    # -- tensors ----------------------------------------------------------------------------

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The adapter's own parameters (nothing of ``base_layer``)."""
        return [p for name, p in self.named_parameters() if not name.startswith("base_layer.")]

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors by leaf name (what the state dict stores for this module)."""
        return {name: p for name, p in self.named_parameters(recurse=False)}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy stored tensors into the adapter's parameters, checking names and shapes."""
        own = self.adapter_tensors()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise FormatError(f"{self.path}: adapter tensors do not match the "
                              f"{self.method.name} layer (missing {missing}, unexpected "
                              f"{unexpected})")
        with torch.no_grad():
            for name, param in own.items():
                value = tensors[name]
                if tuple(value.shape) != tuple(param.shape):
                    raise FormatError(f"{self.path}.{name}: stored shape {tuple(value.shape)} "
                                      f"does not fit the layer's {tuple(param.shape)}")
                param.copy_(value.to(dtype=param.dtype, device=param.device))

    # -- merge kernel, applied to the live weight -------------------------------------------

    @property
    def base_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def delta_weight(self) -> torch.Tensor:
        """This layer's dense ΔW in fp32, computed by the method's merge kernel."""
        return self.method.delta_weight(self.path, self.adapter_tensors(), self.adapter_config,
                                        tuple(self.base_weight.shape))

    def merge(self) -> None:
        """Fold ΔW into the base weight (fp32 add, one cast back); idempotent.

        A base layer that stores its weight in another form (a quantized Linear) folds ΔW
        itself through its ``merge_delta(delta, what=...)`` method.
        """
        if self.merged:
            return
        what = f"{self.method.name} adapter on {self.path}"
        with torch.no_grad():
            delta = self.delta_weight()
            if hasattr(self.base_layer, "merge_delta"):
                self.base_layer.merge_delta(delta, what=what)
            else:
                weight = self.base_weight
                weight.data = fold_delta(weight.data, delta, what=what)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract ΔW again (exact in fp32, approximate in bf16/fp16).

        A base layer with ``merge_delta`` undoes it with ``unmerge_delta(delta, what=...)``.
        """
        if not self.merged:
            return
        what = f"{self.method.name} adapter on {self.path}"
        with torch.no_grad():
            delta = self.delta_weight()
            if hasattr(self.base_layer, "unmerge_delta"):
                self.base_layer.unmerge_delta(delta, what=what)
            else:
                weight = self.base_weight
                weight.data = fold_delta(weight.data, delta, scale=-1.0, what=what)
        self.merged = False

    # -- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.merged or self.disabled:
            return result
        return (result + self.adapter_forward(x)).to(result.dtype)

    def __getattr__(self, name: str) -> Any:
        # Code around a model (transformers' tied weights, dtype checks) reads attributes such
        # as ``weight`` or ``in_features`` of the layer it expects; forward them to the base.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def extra_repr(self) -> str:
        return f"method={self.method.name}, path={self.path!r}, merged={self.merged}"


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLayer]:
    """Every adapterhub adapted layer inside ``model``, by module path."""
    return {path: module for path, module in model.named_modules()
            if isinstance(module, AdaptedLayer)}


# -- targets ---------------------------------------------------------------------------------

#: Default targets by ``config.model_type`` when ``target_modules`` is None (PEFT's choices).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
    "t5": ["q", "v"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "opt": ["q_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
}

ALL_LINEAR = "all-linear"


def layer_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv1d"`` (HF GPT-2 style, weight ``[in, out]``), ``"embedding"`` or None.

    A module may declare its kind with an ``adapterhub_layer_kind`` attribute (quantized
    Linears do), so adapters attach to it like to the layer it replaces.
    """
    from torch import nn

    declared = getattr(type(module), "adapterhub_layer_kind", None)
    if declared is not None:
        return declared
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.ndim == 2:
        return "conv1d"
    return None


def find_targets(model: nn.Module, target_modules: list[str] | str | None, *,
                 kinds: tuple[str, ...], method: str, exact: bool = False
                 ) -> list[tuple[str, nn.Module]]:
    """The ``(path, module)`` pairs ``target_modules`` selects, in model order.

    ``target_modules`` follows PEFT: a list of names matches a module whose path equals a name
    or ends with ``"." + name``; a string is a regex matched against the whole path;
    ``"all-linear"`` takes every Linear except the output head; None uses
    :data:`DEFAULT_TARGETS` for the model's ``config.model_type``. With ``exact``, the list
    holds full paths and every one must exist.
    """
    if target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise TargetError(f"no default target modules for model type {model_type!r}",
                              hint="Pass target_modules, e.g. target_modules=['q_proj','v_proj'] "
                                   "or 'all-linear'")
        target_modules = DEFAULT_TARGETS[model_type]

    inside_adapted = set()
    candidates = []
    for path, module in model.named_modules():
        if isinstance(module, AdaptedLayer):
            inside_adapted.update(f"{path}.{sub}" for sub, _ in module.named_modules() if sub)
            inside_adapted.add(path)
        if path and path not in inside_adapted:
            candidates.append((path, module))

    if target_modules == ALL_LINEAR:
        head = output_head(model)
        selected = [(p, m) for p, m in candidates
                    if layer_kind(m) in ("linear", "conv1d") and m is not head]
    elif isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        selected = [(p, m) for p, m in candidates if pattern.fullmatch(p)]
    elif exact:
        by_path = dict(candidates)
        missing = [p for p in target_modules if p not in by_path]
        if missing:
            raise TargetError(f"the model has no module {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                              hint="Check that the adapter was trained on this model "
                                   "architecture")
        selected = [(p, by_path[p]) for p in target_modules]
    else:
        names = list(target_modules)
        selected = [(p, m) for p, m in candidates
                    if any(p == n or p.endswith("." + n) for n in names)]

    if not selected:
        sample = ", ".join([p for p, m in candidates if layer_kind(m) is not None][:6])
        raise TargetError(f"target_modules={target_modules!r} matched no module of the model"
                          + (f" (some adaptable layers: {sample})" if sample else ""))
    for path, module in selected:
        kind = layer_kind(module)
        if kind not in kinds:
            raise TargetError(f"module {path!r} is a {type(module).__name__}, which the "
                              f"{method!r} method cannot adapt (it adapts: {', '.join(kinds)})")
    return selected


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output head (``get_output_embeddings()``), if it has one."""
    get = getattr(model, "get_output_embeddings", None)
    try:
        return get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        return None


def pattern_key(patterns: dict[str, object], path: str) -> str | None:
    """The key of ``patterns`` that selects module ``path``, as PEFT's ``rank_pattern`` does.

    A key selects a path equal to it, or one its regex matches on the last path parts
    (``"v_proj"`` selects ``"model.layers.0.self_attn.v_proj"``); the longest key wins.
    """
    for key in sorted(patterns, key=len, reverse=True):
        if key == path or re.fullmatch(rf"(.*\.)?(?:{key})", path):
            return key
    return None
