"""Which layers of a model an adapter targets."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from adapterhub.errors import TargetError

if TYPE_CHECKING:
    from torch import nn

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
    from adapterhub.contracts.layers import AdaptedLayer

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
