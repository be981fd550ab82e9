"""LoRA+'s method class: LoRA's kernels with PEFT's four LoRA+ optimizer groups."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterhub_lora import LoraMethod

from adapterhub import ConfigError
from adapterhub import plugin_api
from adapterhub_loraplus.config import LoraPlusConfig

if TYPE_CHECKING:
    from torch import nn

#: group names, in the order PEFT's ``create_loraplus_optimizer`` lists them
GROUPS = ("groupA", "embedding", "groupB", "groupB_no_decay")


class LoraPlusMethod(LoraMethod):
    """LoRA trained with ``lr_B = lr · loraplus_lr_ratio`` (arXiv 2402.12354).

    The adapter is a plain LoRA adapter: same tensors, merge kernel and PEFT export (the ratio
    is a training setting only, so it is not written to ``adapter_config.json``).
    """

    name = "loraplus"
    format_version = 1
    Config = LoraPlusConfig
    description = "LoRA+: LoRA with a higher learning rate for B (PEFT's LoRA+ groups)"

    def param_groups(self, model: nn.Module, lr: float, **kwargs: Any) -> list[dict[str, Any]]:
        """PEFT's four groups, each with a ``name`` key.

        ``groupA``: ``lora_A`` at ``lr``; ``embedding``: both factors of embedding LoRA at
        ``loraplus_lr_embedding``; ``groupB``: ``lora_B`` at ``lr · loraplus_lr_ratio``;
        ``groupB_no_decay``: 1-D tensors (biases, norm scales a layer subclass may add) at
        ``lr · loraplus_lr_ratio`` without weight decay, as PEFT gives them. The other groups
        use ``loraplus_weight_decay``. The three ``loraplus_*`` settings may be overridden as
        keyword arguments; other keyword arguments are copied into every group.
        """
        config = self._config_of(model)
        ratio = kwargs.pop("loraplus_lr_ratio", config.loraplus_lr_ratio)
        lr_embedding = kwargs.pop("loraplus_lr_embedding", config.loraplus_lr_embedding)
        decay = kwargs.pop("loraplus_weight_decay", config.loraplus_weight_decay)
        if "weight_decay" in kwargs:
            raise ConfigError("LoRA+ sets weight decay per group; pass loraplus_weight_decay "
                              "instead of weight_decay")
        members: dict[str, list[nn.Parameter]] = {group: [] for group in GROUPS}
        for layer in plugin_api.adapted_layers(model).values():
            for name, param in layer.named_parameters():
                if name.startswith("base_layer.") or not param.requires_grad:
                    continue
                members[_group_of(layer.kind, name, param.ndim)].append(param)
        settings = {"groupA": (lr, decay), "embedding": (lr_embedding, decay),
                    "groupB": (lr * ratio, decay), "groupB_no_decay": (lr * ratio, 0.0)}
        return [{"params": members[group], "lr": settings[group][0],
                 "weight_decay": settings[group][1], "name": group, **kwargs}
                for group in GROUPS]

    @staticmethod
    def _config_of(model: nn.Module) -> LoraPlusConfig:
        configs = {id(layer.adapter_config): layer.adapter_config
                   for layer in plugin_api.adapted_layers(model).values()
                   if isinstance(layer.adapter_config, LoraPlusConfig)}
        if len(configs) != 1:
            raise ConfigError(f"param_groups needs exactly one attached LoRA+ adapter; the "
                              f"model has {len(configs)}",
                              hint="Attach with adapterhub.attach(model, 'loraplus', ...)")
        return next(iter(configs.values()))


def _group_of(kind: str | None, name: str, ndim: int) -> str:
    """PEFT's membership rule, in its order: embedding layer, then B or 1-D, then A."""
    if kind == "embedding":
        return "embedding"
    if ndim == 1:
        return "groupB_no_decay"
    if "lora_B" in name:
        return "groupB"
    return "groupA"
