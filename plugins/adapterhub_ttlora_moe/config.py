"""The configs of ``ttlora`` (one tensor-train adapter) and ``ttlora_moe`` (a router over them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from adapterhub import ConfigError, MethodConfig, plugin_api
from adapterhub.plugin_api import is_digest

INITS = ("direct", "zero")
POOLINGS = ("last", "mean")
ROUTER_TRAINING = ("noisy_topk", "dense")


@dataclass
class TTLoraConfig(MethodConfig):
    r: int = field(default=5, metadata={"help": "TT rank: every internal rank of the train "
                                                "(ranks are [1, r, ..., r, 1])"})
    alpha: float = field(default=16.0, metadata={"help": "scaling: y = W x + alpha * ΔW x "
                                                         "(multiplied directly, not divided by r)"})
    max_factor: int = field(default=16, metadata={
        "help": "automatic factorisation: the fewest factors of d_in and d_out no larger than "
                "this, as equal as possible"})
    factors: dict[str, list[list[int]]] = field(default_factory=dict, metadata={
        "help": "explicit factorisations: {module name or regex: [m_factors, n_factors]}, "
                "m_1 (the fastest input index) first; overrides max_factor"})
    init: str = field(default="direct", metadata={
        "help": "'direct': unit-norm random cores (ΔW ≠ 0 at step 0, as in TT-LoRA MoE); "
                "'zero': the same with the last core zeroed (ΔW = 0 at step 0)"})

    def validate(self) -> None:
        if not _positive_int(self.r):
            raise ConfigError(f"`r` must be a positive integer; got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool):
            raise ConfigError(f"`alpha` must be a number; got {self.alpha!r}")
        if not _positive_int(self.max_factor) or self.max_factor < 2:
            raise ConfigError(f"`max_factor` must be an integer >= 2; got {self.max_factor!r}")
        if self.init not in INITS:
            raise ConfigError(f"`init` must be one of {', '.join(INITS)}; got {self.init!r}")
        if not isinstance(self.factors, dict):
            raise ConfigError(f"`factors` must map module names to [m_factors, n_factors]; got "
                              f"{self.factors!r}")
        for key, value in self.factors.items():
            if not (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(isinstance(fs, (list, tuple)) and fs and all(map(_positive_int, fs))
                            for fs in value)):
                raise ConfigError(f"factors[{key!r}] must be [m_factors, n_factors], two "
                                  f"non-empty lists of positive integers; got {value!r}")
            self.factors[key] = [list(value[0]), list(value[1])]

    def factors_for(self, path: str, d_in: int, d_out: int) -> tuple[list[int], list[int]]:
        """``(m_factors, n_factors)`` of the module at ``path`` with a ``[d_out, d_in]`` weight."""
        from adapterhub_ttlora_moe.tensor_train import balanced_factors

        key = plugin_api.pattern_key(self.factors, path)
        if key is None:
            return balanced_factors(d_in, self.max_factor), balanced_factors(d_out,
                                                                             self.max_factor)
        m_factors, n_factors = self.factors[key]
        if math.prod(m_factors) != d_in or math.prod(n_factors) != d_out:
            raise ConfigError(f"factors[{key!r}] = {[m_factors, n_factors]} does not fit module "
                              f"{path!r}: the products must be d_in={d_in} and d_out={d_out}")
        return list(m_factors), list(n_factors)


@dataclass
class TTLoraMoeConfig(MethodConfig):
    experts: list[str] = field(default_factory=list, metadata={
        "help": "the ttlora expert versions (digests), in router order; also the manifest's "
                "parents"})
    expert_names: list[str] = field(default_factory=list, metadata={
        "help": "a name per expert (what --expert NAME picks), in the same order"})
    top_k: int = field(default=1, metadata={
        "help": "experts per input; 1 routes each sequence to exactly one expert"})
    noisy_gating: bool = field(default=True, metadata={
        "help": "Shazeer's noisy top-k gating while the router trains (routing at inference "
                "is deterministic)"})
    pooling: str = field(default="last", metadata={
        "help": "router input: the base model's last hidden state at the last non-pad token "
                "('last') or averaged over non-pad tokens ('mean')"})
    router_training: str = field(default="noisy_topk", metadata={
        "help": "'noisy_topk': the router learns each row's expert label from its noisy top-k "
                "logits (the reference); 'dense' (DS-MoE): every expert weighted by a softmax "
                "over all of them, trained on the task loss through the frozen experts. Both "
                "route top-k at inference"})

    def validate(self) -> None:
        if not isinstance(self.experts, list) or not self.experts:
            raise ConfigError("a ttlora_moe config needs `experts`: the digests of its ttlora "
                              "expert versions", hint="Build it with adapterhub_ttlora_moe."
                                                      "train_router(model, experts, ...)")
        bad = [e for e in self.experts if not is_digest(e)]
        if bad:
            raise ConfigError(f"`experts` must be sha256 version digests; got {bad[0]!r}")
        if len(set(self.experts)) != len(self.experts):
            raise ConfigError("`experts` lists the same expert version twice")
        if not isinstance(self.expert_names, list) or len(self.expert_names) != len(self.experts):
            raise ConfigError(f"`expert_names` must give one name per expert "
                              f"({len(self.experts)}); got {self.expert_names!r}")
        if not all(isinstance(n, str) and n for n in self.expert_names) \
                or len(set(self.expert_names)) != len(self.expert_names):
            raise ConfigError(f"`expert_names` must be distinct non-empty strings; got "
                              f"{self.expert_names!r}")
        if not _positive_int(self.top_k) or self.top_k > len(self.experts):
            raise ConfigError(f"`top_k` must be between 1 and the number of experts "
                              f"({len(self.experts)}); got {self.top_k!r}")
        if not isinstance(self.noisy_gating, bool):
            raise ConfigError(f"`noisy_gating` must be true or false; got {self.noisy_gating!r}")
        if self.router_training not in ROUTER_TRAINING:
            raise ConfigError(f"`router_training` must be one of {', '.join(ROUTER_TRAINING)}; "
                              f"got {self.router_training!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"`pooling` must be one of {', '.join(POOLINGS)}; got "
                              f"{self.pooling!r}")

    def expert_index(self, expert: str | int) -> int:
        """The router index of an expert given by name, index or digest (prefix)."""
        if isinstance(expert, int) and not isinstance(expert, bool):
            if 0 <= expert < len(self.experts):
                return expert
        elif isinstance(expert, str):
            if expert in self.expert_names:
                return self.expert_names.index(expert)
            if expert.isdigit() and int(expert) < len(self.experts):
                return int(expert)
            hits = [i for i, d in enumerate(self.experts) if len(expert) >= 12 + 7
                    and d.startswith(expert)]
            if len(hits) == 1:
                return hits[0]
        raise ConfigError(f"no expert {expert!r} in this ttlora_moe version (experts: "
                          f"{', '.join(self.expert_names)})",
                          hint="Pick an expert by name or by index 0.."
                               f"{len(self.experts) - 1}")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
