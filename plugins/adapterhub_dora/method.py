"""DoRA's method class: LoRA's config and factors, a magnitude vector, a base-dependent merge."""

from __future__ import annotations

from typing import Any

from adapterhub_lora import LoraMethod

from adapterhub import ConfigError, FormatError, MergeError
from adapterhub import plugin_api
from adapterhub.plugin_api import check_finite

MAGNITUDE = "lora_magnitude_vector"
FACTORS = ("lora_A", "lora_B")


class DoraMethod(LoraMethod):
    """Weight-decomposed LoRA: ``W' = m · (W + s·B A) / ‖W + s·B A‖`` per output feature.

    Stored tensors per module: ``lora_A`` ``[r, in]``, ``lora_B`` ``[out, r]`` (as LoRA) and
    ``lora_magnitude_vector`` ``[out]`` (PEFT's name, which PEFT files keep without a
    ``.weight`` suffix). The config is LoRA's. Linear and GPT-2 Conv1D layers; not embeddings.
    """

    name = "dora"
    format_version = 1
    description = "DoRA with PEFT semantics: LoRA direction, trained magnitude per output"
    layer_kinds = ("linear", "conv1d")
    peft_type = "LORA"
    peft_flags = {"use_dora": True}
    base_dependence = ("DoRA rescales each output feature of W + ΔW to its trained magnitude, "
                       "so the change it makes depends on the base weight")

    def identity_at_init(self, config):
        return config.init_lora_weights is not False  # B = 0, m = ‖W‖: exactly the base

    def check_targets(self, targets, config):
        super().check_targets(targets, config)
        if config.fan_in_fan_out and any(plugin_api.layer_kind(m) == "linear" for _, m in targets):
            raise ConfigError("fan_in_fan_out is for GPT-2 Conv1D layers (weight [in, out]); "
                              "these targets include nn.Linear layers",
                              hint="Drop fan_in_fan_out; it is set for Conv1D targets itself")

    def make_layer(self, base, config, path):
        from adapterhub_dora.layer import DoraLinear

        return DoraLinear(base, self, config, path)

    # -- merge kernel -----------------------------------------------------------------------

    def infer_base_shape(self, module, tensors, config):
        return super().infer_base_shape(module, _factors(module, tensors), config)

    def module_kind(self, module, tensors, config):
        return super().module_kind(module, _factors(module, tensors), config)

    def delta_weight(self, module, tensors, config, base_shape):
        raise MergeError(f"{module}: a DoRA adapter has no ΔW of its own; "
                         f"{self.base_dependence}",
                         hint="Merge it into a base weight (AdapterMethod.merge, 'adapterhub "
                              "apply')")

    def low_rank(self, module, tensors, config, base_shape):
        return None

    def magnitude_low_rank(self, module, tensors, config, base_shape):
        """``(L, R, m)`` with ``W' = m · (W + L R) / ‖W + L R‖`` (the magnitude-and-direction
        form serving engines such as TensorRT-LLM take; see
        :class:`adapterhub.io.formats.trtllm.MagnitudeLowRank`)."""
        left, right = super().low_rank(module, _factors(module, tensors), config, base_shape)
        return left, right, tensors[MAGNITUDE].float()

    def merge(self, weight, module, tensors, config, *, scale=1.0):
        """``(m / ‖W + s·B A‖)·(W + s·B A)`` in fp32, one cast back; with ``scale`` ≠ 1 the
        change is scaled: ``W + scale·(W' − W)``."""
        import torch

        from adapterhub_dora.kernels import merged_weight

        factors = _factors(module, tensors)
        a, b = factors["lora_A"], factors["lora_B"]
        magnitude = tensors[MAGNITUDE]
        fan_in_fan_out = bool(config.fan_in_fan_out)
        rows = weight.shape[1] if fan_in_fan_out else weight.shape[0]
        if magnitude.shape != (rows,):
            raise FormatError(f"{module}: {MAGNITUDE} has shape {list(magnitude.shape)}; the "
                              f"weight {list(weight.shape)} has {rows} output features")
        merged, _ = merged_weight(weight, a, b, magnitude,
                                  config.scaling_for(module, a.shape[0]), fan_in_fan_out)
        if scale != 1.0:
            base = weight.to(merged.dtype)
            merged = torch.add(base, merged - base, alpha=scale)
        merged = merged.to(weight.dtype)
        check_finite(merged, f"{self.name} adapter on {module}")
        return merged

    # -- PEFT ------------------------------------------------------------------------------

    def to_peft(self, package):
        peft_config, tensors = super().to_peft(package)
        return {**peft_config, "use_dora": True}, tensors

    def from_peft(self, adapter_config, tensors):
        magnitudes = {k: v for k, v in tensors.items() if k.endswith("." + MAGNITUDE)}
        factors = {k: v for k, v in tensors.items() if k not in magnitudes}
        if any(".lora_embedding_" in key for key in factors):
            raise FormatError("this PEFT DoRA adapter adapts an embedding layer; adapterhub's "
                              "dora method adapts Linear and Conv1D layers only")
        config, native = super().from_peft({**adapter_config, "use_dora": False}, factors)
        modules = {key.rpartition(".")[0] for key in native}
        with_magnitude = {key.rpartition(".")[0] for key in magnitudes}
        if modules != with_magnitude:
            odd = sorted(modules ^ with_magnitude)
            raise FormatError(f"this PEFT DoRA adapter lacks {MAGNITUDE} or lora_A/lora_B "
                              f"for {odd[0]} ({len(odd)} module(s) in all)")
        return config, {**native, **magnitudes}


def _factors(module: str, tensors: dict[str, Any]) -> dict[str, Any]:
    """LoRA's two factors of a DoRA module, checking the magnitude is there."""
    if set(tensors) != {*FACTORS, MAGNITUDE}:
        raise FormatError(f"{module}: a DoRA module holds lora_A, lora_B and {MAGNITUDE}; got "
                          f"{sorted(tensors)}")
    return {key: tensors[key] for key in FACTORS}
