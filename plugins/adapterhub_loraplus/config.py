"""LoRA+'s config: LoRA's fields plus the three optimizer settings of PEFT's LoRA+ helper."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterhub_lora import LoraConfig

from adapterhub import ConfigError


@dataclass
class LoraPlusConfig(LoraConfig):
    loraplus_lr_ratio: float = field(default=16.0, metadata={
        "help": "learning rate of B over that of A (lr_B = lr * ratio); 1 reproduces LoRA"})
    loraplus_lr_embedding: float = field(default=1e-6, metadata={
        "help": "learning rate of both factors of LoRA on embedding layers"})
    loraplus_weight_decay: float = field(default=0.0, metadata={
        "help": "weight decay of every group except 1-D tensors (which get none)"})

    def validate(self) -> None:
        super().validate()
        for name in ("loraplus_lr_ratio", "loraplus_lr_embedding", "loraplus_weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"`{name}` must be a non-negative number; got {value!r}")
        if self.loraplus_lr_ratio == 0:
            raise ConfigError("`loraplus_lr_ratio` must be positive; got 0",
                              hint="Use loraplus_lr_ratio=1 for plain LoRA learning rates")
