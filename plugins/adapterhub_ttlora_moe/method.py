"""The two method classes: ``ttlora`` and ``ttlora_moe``."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from adapterhub import AdapterMethod, FormatError, MergeError
from adapterhub_ttlora_moe.config import TTLoraConfig, TTLoraMoeConfig

if TYPE_CHECKING:
    import torch

CORE_RE = re.compile(r"tt_(in|out)_(\d+)")


class TTLoraMethod(AdapterMethod):
    """TT-LoRA: ΔW as a tensor train of small 3-D cores (lanl/TTLoRAMoE's contraction form).

    Stored tensors per module: ``<path>.tt_in_<k>`` (input cores, ``k = 0`` has mode ``m_1``)
    and ``<path>.tt_out_<j>`` (output cores in train order, ``j = 0`` has mode ``n_q``), each
    ``[r_prev, mode, r_next]``; the names alone give the split, so no shape is ambiguous.
    """

    name = "ttlora"
    format_version = 1
    Config = TTLoraConfig
    description = "TT-LoRA: tensor-train adapter (cores of a factorised ΔW), α·ΔW x"
    layer_kinds = ("linear",)

    def identity_at_init(self, config: TTLoraConfig) -> bool:
        return config.init == "zero"

    def make_layer(self, base, config, path):
        from adapterhub_ttlora_moe.layers import TTLoraLinear

        return TTLoraLinear(base, self, config, path)

    def infer_base_shape(self, module, tensors, config):
        in_cores, out_cores = split_cores(module, tensors)
        return (_modes(out_cores), _modes(in_cores))

    def delta_weight(self, module, tensors, config, base_shape):
        from adapterhub_ttlora_moe.tensor_train import dense_delta

        in_cores, out_cores = split_cores(module, tensors)
        delta = dense_delta([c.float() for c in in_cores], [c.float() for c in out_cores])
        if tuple(delta.shape) != tuple(base_shape):
            raise MergeError(f"{module}: the ttlora cores give a {list(delta.shape)} ΔW; the "
                             f"base weight is {list(base_shape)}")
        return delta * float(config.alpha)


class TTLoraMoeMethod(AdapterMethod):
    """TT-LoRA MoE: frozen ttlora experts and a router that picks one per input sequence.

    A version stores only the router (``router.gate``, ``router.noise``, ``router.noise_bias``)
    and its config; the experts are separate ``ttlora`` versions named by digest in the config
    and in the manifest's ``parents``: a composite method, whose components are its experts.
    """

    name = "ttlora_moe"
    format_version = 1
    Config = TTLoraMoeConfig
    description = "TT-LoRA MoE: a router over frozen ttlora experts (one expert per sequence)"
    layer_kinds = ("linear",)
    composite = True
    composite_hint = ("Train experts with method 'ttlora', then call adapterhub_ttlora_moe."
                      "train_router(model, experts, ...) (or build a version with "
                      "adapterhub_ttlora_moe.moe_package(router, config, experts))")

    def identity_at_init(self, config: TTLoraMoeConfig) -> bool:
        return False

    def components(self, config):
        return dict(zip(config.expert_names, config.experts))

    def no_single_delta(self, config):
        return MergeError(f"a ttlora_moe version routes each input to one of "
                          f"{len(config.experts)} experts ({', '.join(config.expert_names)}), "
                          f"so it has no single ΔW",
                          hint="Pick one expert to fold in (CLI: --expert NAME, Python: "
                               "adapterhub_ttlora_moe.select_expert)")

    def train_composite(self, model, components, inputs, labels, *, epochs, lr, batch_size,
                        seed, show_progress=True):
        from adapterhub_ttlora_moe.training import train_router

        return train_router(model, components, inputs, labels, epochs=epochs, lr=lr,
                            batch_size=batch_size, seed=seed, quiet=not show_progress)

    def load(self, model, tensors, config, components: Any = None):
        """Attach the experts and the router to ``model``; ``components`` are the experts.

        Raises :class:`adapterhub.AdapterNotFoundError` naming the digest of any expert the
        config lists that ``experts`` does not supply.
        """
        from adapterhub_ttlora_moe.experts import resolve_experts
        from adapterhub_ttlora_moe.moe import attach_moe

        packages = resolve_experts(config, components)
        return attach_moe(model, config, packages, self.group_tensors(tensors).get("router"))

    def param_groups(self, model, lr, **kwargs):
        from adapterhub_ttlora_moe.moe import router_of

        return [{"params": list(router_of(model).parameters()), "lr": lr, **kwargs}]

    def infer_base_shape(self, module, tensors, config):
        # Only AdapterPackage.build asks, for the router's group; moe_package then records the
        # experts' modules instead (those are what the version adapts).
        if module != "router" or "gate" not in tensors:
            raise FormatError(f"unexpected tensor group {module!r} in a ttlora_moe version "
                              f"(it stores router.gate, router.noise, router.noise_bias)")
        return tuple(tensors["gate"].shape)


def split_cores(module: str, tensors: dict[str, torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The input and output cores of one module, checked to form a train ``[1, …, 1]``."""
    parts: dict[str, dict[int, torch.Tensor]] = {"in": {}, "out": {}}
    for name, tensor in tensors.items():
        match = CORE_RE.fullmatch(name)
        if not match:
            raise FormatError(f"{module}: unexpected tensor {name!r} in a ttlora module (it "
                              f"holds tt_in_<k> and tt_out_<k>)")
        parts[match[1]][int(match[2])] = tensor
    for side, found in parts.items():
        if not found or sorted(found) != list(range(len(found))):
            raise FormatError(f"{module}: ttlora cores tt_{side}_0..tt_{side}_<n> are "
                              f"incomplete (found {sorted(found)})")
    in_cores = [parts["in"][k] for k in range(len(parts["in"]))]
    out_cores = [parts["out"][k] for k in range(len(parts["out"]))]
    cores = in_cores + out_cores
    shapes = [tuple(c.shape) for c in cores]
    if any(len(s) != 3 for s in shapes) or shapes[0][0] != 1 or shapes[-1][2] != 1 or any(
            a[2] != b[0] for a, b in zip(shapes, shapes[1:])):
        raise FormatError(f"{module}: ttlora core shapes {shapes} do not form a tensor train "
                          f"with boundary ranks 1")
    return in_cores, out_cores


def _modes(cores: list[torch.Tensor]) -> int:
    return math.prod(int(core.shape[1]) for core in cores)
