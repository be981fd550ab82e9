"""LoRA's method class: attach, merge kernel and the PEFT mapping."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from adapterhub import AdapterMethod, ConfigError, FormatError, MergeError, plugin_api
from adapterhub_lora.config import LoraConfig

if TYPE_CHECKING:
    import torch

#: PEFT config keys whose non-default values change what the adapter computes
UNSUPPORTED_PEFT = {"use_dora": False, "lora_bias": False, "modules_to_save": None,
                    "layer_replication": None, "use_bdlora": None}
LINEAR_KEYS = ("lora_A", "lora_B")
EMBEDDING_KEYS = ("lora_embedding_A", "lora_embedding_B")


class LoraMethod(AdapterMethod):
    """Low-rank adaptation: ``W + s·B A`` with A ``[r, d_in]`` and B ``[d_out, r]``."""

    name = "lora"
    format_version = 1
    Config = LoraConfig
    description = "LoRA with PEFT semantics (rsLoRA, dropout, Conv1D, embeddings)"
    layer_kinds = ("linear", "conv1d", "embedding")
    peft_type = "LORA"
    stores_low_rank = True

    def check_targets(self, targets, config):
        kinds = {plugin_api.layer_kind(module) for _, module in targets}
        if "conv1d" in kinds and not config.fan_in_fan_out:
            if "linear" in kinds:
                raise ConfigError("target_modules mixes Linear and Conv1D layers; one "
                                  "fan_in_fan_out setting cannot serve both")
            warnings.warn("fan_in_fan_out is set to True: the targets are Conv1D layers",
                          stacklevel=4)
            config.fan_in_fan_out = True

    def make_layer(self, base, config, path):
        from adapterhub_lora.layer import LoraEmbedding, LoraLinear

        if plugin_api.layer_kind(base) == "embedding":
            return LoraEmbedding(base, self, config, path)
        return LoraLinear(base, self, config, path)

    # -- merge kernel -----------------------------------------------------------------------

    def infer_base_shape(self, module, tensors, config):
        if set(tensors) == set(EMBEDDING_KEYS):
            return (tensors["lora_embedding_A"].shape[1], tensors["lora_embedding_B"].shape[0])
        a, b = _linear_pair(module, tensors)
        d_out, d_in = b.shape[0], a.shape[1]
        return (d_in, d_out) if config.fan_in_fan_out else (d_out, d_in)

    def delta_weight(self, module, tensors, config, base_shape):
        if set(tensors) == set(EMBEDDING_KEYS):
            a, b = tensors["lora_embedding_A"], tensors["lora_embedding_B"]
            scaling = config.scaling_for(module, a.shape[0])
            return (b.float() @ a.float()).T * scaling
        a, b = _linear_pair(module, tensors)
        delta = (b.float() @ a.float()) * config.scaling_for(module, a.shape[0])
        return delta.T if config.fan_in_fan_out else delta

    def low_rank(self, module, tensors, config, base_shape):
        """``(s·B, A)`` for a Linear; transposed for Conv1D and embeddings (``[in, out]`` and
        ``[num, dim]`` layouts), so the scaling always rides on B."""
        if set(tensors) == set(EMBEDDING_KEYS):
            a, b = tensors["lora_embedding_A"].float(), tensors["lora_embedding_B"].float()
            return a.T, (b * config.scaling_for(module, a.shape[0])).T
        a, b = _linear_pair(module, tensors)
        a, b = a.float(), b.float() * config.scaling_for(module, a.shape[0])
        return (a.T, b.T) if config.fan_in_fan_out else (b, a)

    def module_kind(self, module, tensors, config):
        if set(tensors) == set(EMBEDDING_KEYS):
            return "embedding"
        return "conv1d" if config.fan_in_fan_out else "linear"

    def from_low_rank(self, factors, kinds):
        """A LoRA with scaling 1 (``lora_alpha = r``, no rsLoRA) whose ΔW is ``L @ R`` for each
        module; modules of another rank than the largest get rank and alpha patterns."""
        if {"linear", "conv1d"} <= set(kinds.values()):
            raise MergeError("these modules mix Linear and Conv1D layers; one LoRA config "
                             "cannot hold both (fan_in_fan_out)")
        tensors, ranks = {}, {}
        for path, (left, right) in sorted(factors.items()):
            left, right = left.float().contiguous(), right.float().contiguous()
            ranks[path] = left.shape[1]
            kind = kinds.get(path, "linear")
            if kind == "embedding":
                tensors[f"{path}.lora_embedding_A"] = left.T.contiguous()
                tensors[f"{path}.lora_embedding_B"] = right.T.contiguous()
            elif kind == "conv1d":
                tensors[f"{path}.lora_A"] = left.T.contiguous()
                tensors[f"{path}.lora_B"] = right.T.contiguous()
            else:
                tensors[f"{path}.lora_A"] = right
                tensors[f"{path}.lora_B"] = left
        r = max(ranks.values(), default=1)
        others = {path: k for path, k in ranks.items() if k != r}
        config = self.make_config(r=r, lora_alpha=r, use_rslora=False,
                                  fan_in_fan_out="conv1d" in kinds.values(),
                                  target_modules=sorted(factors), rank_pattern=others,
                                  alpha_pattern=dict(others))
        return config, tensors

    # -- PEFT ------------------------------------------------------------------------------

    def to_peft(self, package):
        config = package.config
        modules = sorted(package.manifest.base_model.get("modules", {}))
        tensors = {}
        for key, value in package.tensors.items():
            path, _, leaf = key.rpartition(".")
            tensors[f"{path}.{leaf}.weight" if leaf in LINEAR_KEYS else key] = value
        peft_config: dict[str, Any] = {
            "peft_type": "LORA", "r": config.r, "lora_alpha": config.lora_alpha,
            "lora_dropout": config.lora_dropout, "use_rslora": config.use_rslora,
            "fan_in_fan_out": config.fan_in_fan_out,
            "init_lora_weights": config.init_lora_weights,
            "rank_pattern": config.rank_pattern, "alpha_pattern": config.alpha_pattern,
            # exact module paths: PEFT matches a path equal to, or ending with, each entry
            "target_modules": config.target_modules if config.target_modules not in
            (None, "all-linear") else modules,
            "bias": "none", "use_dora": False, "modules_to_save": None,
        }
        return peft_config, tensors

    def from_peft(self, adapter_config, tensors):
        for key, neutral in UNSUPPORTED_PEFT.items():
            if adapter_config.get(key, neutral) not in (neutral, [], {}):
                raise FormatError(f"this PEFT adapter uses {key}={adapter_config[key]!r}, "
                                  f"which adapterhub's lora method does not support")
        if adapter_config.get("bias", "none") != "none":
            raise FormatError(f"this PEFT adapter trains biases (bias="
                              f"{adapter_config['bias']!r}), which adapterhub does not support")
        native = {}
        for key, value in tensors.items():
            path, _, leaf = key.rpartition(".")
            if leaf == "weight" and path.rpartition(".")[2] in LINEAR_KEYS:
                native[path] = value
            elif leaf in EMBEDDING_KEYS:
                native[key] = value
            else:
                raise FormatError(f"unexpected tensor {key!r} in a PEFT LoRA adapter")
        init = adapter_config.get("init_lora_weights", True)
        fields = {
            "r": adapter_config.get("r", 8), "lora_alpha": adapter_config.get("lora_alpha", 8),
            "lora_dropout": adapter_config.get("lora_dropout", 0.0),
            "use_rslora": bool(adapter_config.get("use_rslora", False)),
            "fan_in_fan_out": bool(adapter_config.get("fan_in_fan_out", False)),
            "init_lora_weights": init if init in (True, False, "gaussian") else True,
            "rank_pattern": adapter_config.get("rank_pattern") or {},
            "alpha_pattern": adapter_config.get("alpha_pattern") or {},
            "target_modules": adapter_config.get("target_modules"),
        }
        return self.make_config(fields), native


def _linear_pair(module: str, tensors: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    if set(tensors) != set(LINEAR_KEYS):
        raise FormatError(f"{module}: a LoRA module holds lora_A and lora_B (or "
                          f"lora_embedding_A and lora_embedding_B); got {sorted(tensors)}")
    a, b = tensors["lora_A"], tensors["lora_B"]
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise FormatError(f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do "
                          f"not form a rank-r pair")
    return a, b
