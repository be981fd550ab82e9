"""MELoRA's config: the mini rank, the number of mini LoRAs, and LoRA's usual knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterhub import ConfigError, MethodConfig


@dataclass
class MeloraConfig(MethodConfig):
    r: int = field(default=2, metadata={
        "help": "rank of each mini LoRA (the equivalent rank of ΔW is n * r)"})
    n: int = field(default=4, metadata={
        "help": "number of mini LoRAs; d_in and d_out of every target must divide by n"})
    lora_alpha: float = field(default=16, metadata={
        "help": "scaling numerator of each mini LoRA: s = alpha / r (the mini rank)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    init_lora_weights: bool = field(default=True, metadata={
        "help": "true: kaiming-uniform A_i, zero B_i (ΔW = 0); false: random B_i too (tests)"})

    def validate(self) -> None:
        for name in ("r", "n"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"`{name}` must be a positive integer; got {value!r}")
        if not isinstance(self.lora_alpha, (int, float)) or isinstance(self.lora_alpha, bool):
            raise ConfigError(f"`lora_alpha` must be a number; got {self.lora_alpha!r}")
        if not (isinstance(self.lora_dropout, (int, float)) and 0 <= self.lora_dropout < 1):
            raise ConfigError(f"`lora_dropout` must be in [0, 1); got {self.lora_dropout!r}")
        if not isinstance(self.init_lora_weights, bool):
            raise ConfigError(f"`init_lora_weights` must be true or false; got "
                              f"{self.init_lora_weights!r}")

    @property
    def scaling(self) -> float:
        """Each mini LoRA's ``alpha / r`` (the mini rank, as in the official code)."""
        return self.lora_alpha / self.r
