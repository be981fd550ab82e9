"""vLLM's LoRA layout: PEFT files that every serving engine reads the same way.

vLLM reads ``r``, ``lora_alpha``, ``use_rslora`` and ``target_modules`` and applies *one*
scaling to every module: it ignores ``rank_pattern``/``alpha_pattern``, refuses DoRA and
``modules_to_save``, and caps ranks at ``--max-lora-rank`` (one of :data:`VLLM_RANKS`). So the
export folds each module's scaling into ``lora_B``, writes ``lora_alpha = r`` with rsLoRA off,
pads smaller ranks with zeros to one ``r``, and refuses what vLLM cannot serve (embedding and
``lm_head`` adapters, methods without a low-rank form, ranks above 512).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterhub.errors import ExportError

if TYPE_CHECKING:
    import torch

    from adapterhub.io.package import AdapterPackage

#: the values vLLM accepts for ``--max-lora-rank``
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: module names of embeddings and output heads, which vLLM does not adapt with LoRA
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head", "wte", "wpe", "word_embeddings",
                               "position_embeddings", "token_type_embeddings", "embed_in",
                               "embed_out"})
APPLY_HINT = "Merge it into the base model with 'adapterhub apply' and serve the merged model"


def vllm_layout(package: AdapterPackage) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(adapter_config, tensors with PEFT keys)`` that vLLM loads with the same outputs."""
    import torch

    from adapterhub.contracts.plugins import low_rank_method
    from adapterhub.io.formats.peft import peft_layout
    from adapterhub.io.package import AdapterPackage

    method, config = package.method, package.config
    if method.base_dependence:
        raise ExportError(f"vLLM cannot load {method.name!r} adapters: "
                          f"{method.base_dependence}", hint=APPLY_HINT)
    shapes = package.manifest.base_model.get("modules", {})
    factors, kinds = {}, {}
    for module, group in sorted(method.group_tensors(package.tensors).items()):
        kind = method.module_kind(module, group, config)
        if kind == "embedding" or module.rpartition(".")[2] in EMBEDDING_MODULES:
            raise ExportError(f"vLLM does not load LoRA on embeddings or output heads "
                              f"({module})", hint=APPLY_HINT)
        pair = method.low_rank(module, group, config, tuple(shapes[module]))
        if pair is None:
            raise ExportError(f"vLLM serves LoRA only, and the {method.name!r} method has no "
                              f"low-rank form", hint=APPLY_HINT)
        factors[module], kinds[module] = pair, kind
    rank = max((left.shape[1] for left, _ in factors.values()), default=1)
    if rank > VLLM_RANKS[-1]:
        raise ExportError(f"rank {rank} is above the largest rank vLLM serves "
                          f"({VLLM_RANKS[-1]})",
                          hint="Re-merge it to a smaller rank (adapterhub merge --strategy svd "
                               "--rank R) or merge it into the base with 'adapterhub apply'")
    padded = {module: (torch.nn.functional.pad(left, (0, rank - left.shape[1])),
                       torch.nn.functional.pad(right, (0, 0, 0, rank - right.shape[0])))
              for module, (left, right) in factors.items()}
    lora = low_rank_method()
    lora_config, tensors = lora.from_low_rank(padded, kinds)
    base = package.manifest.base_model
    plain = AdapterPackage.build(lora, lora_config, tensors, base_name=base.get("name"),
                                 base_revision=base.get("revision"))
    peft_config, peft_tensors = peft_layout(plain)
    return {**peft_config, "fan_in_fan_out": False}, peft_tensors
