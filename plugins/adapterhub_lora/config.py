"""LoRA's config: PEFT's ``LoraConfig`` fields that change the adapter's math."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from adapterhub import ConfigError, MethodConfig

INITS = (True, False, "gaussian")


@dataclass
class LoraConfig(MethodConfig):
    r: int = field(default=8, metadata={"help": "rank of each adapted matrix"})
    lora_alpha: float = field(default=8, metadata={"help": "scaling numerator: s = alpha / r "
                                                           "(alpha / sqrt(r) with rsLoRA)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling "
                                                              "alpha / sqrt(r)"})
    fan_in_fan_out: bool = field(default=False, metadata={
        "help": "base weight stored [in, out] (GPT-2 Conv1D); set automatically for Conv1D"})
    init_lora_weights: bool | str = field(default=True, metadata={
        "help": "true: kaiming-uniform A, zero B (ΔW = 0); 'gaussian': A ~ N(0, 1/r), zero B "
                "(ΔW = 0); false: random A and B (ΔW ≠ 0, for tests)"})
    rank_pattern: dict[str, int] = field(default_factory=dict, metadata={
        "help": "per-module rank overrides: {module name or regex: r}"})
    alpha_pattern: dict[str, float] = field(default_factory=dict, metadata={
        "help": "per-module alpha overrides: {module name or regex: alpha}"})

    def validate(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise ConfigError(f"`r` must be a positive integer; got {self.r!r}")
        if not isinstance(self.lora_alpha, (int, float)) or isinstance(self.lora_alpha, bool):
            raise ConfigError(f"`lora_alpha` must be a number; got {self.lora_alpha!r}")
        if not (isinstance(self.lora_dropout, (int, float)) and 0 <= self.lora_dropout < 1):
            raise ConfigError(f"`lora_dropout` must be in [0, 1); got {self.lora_dropout!r}")
        if not any(self.init_lora_weights is v or self.init_lora_weights == v == "gaussian"
                   for v in INITS):
            raise ConfigError(f"`init_lora_weights` must be true, false or 'gaussian'; got "
                              f"{self.init_lora_weights!r}")
        for key, value in self.rank_pattern.items():
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"rank_pattern[{key!r}] must be a positive integer; got "
                                  f"{value!r}")

    def rank_for(self, path: str) -> int:
        return self.rank_pattern[key] if (key := _pattern_key(self.rank_pattern, path)) \
            else self.r

    def scaling_for(self, path: str, rank: int) -> float:
        """s = alpha / r, or alpha / sqrt(r) with rsLoRA (``rank`` is the module's real rank)."""
        key = _pattern_key(self.alpha_pattern, path)
        alpha = self.alpha_pattern[key] if key else self.lora_alpha
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def _pattern_key(patterns: dict, path: str) -> str | None:
    """The pattern matching ``path`` as PEFT matches them: the longest key first."""
    for key in sorted(patterns, key=len, reverse=True):
        if key == path or re.fullmatch(rf"(.*\.)?(?:{key})", path):
            return key
    return None
