"""RepLoRA's config: LoRA's fields plus the generators' shape and how widely they are shared."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from adapterhub_lora import LoraConfig

from adapterhub import ConfigError

ACTIVATIONS = ("gelu", "relu", "tanh", "identity")
SHARING = ("block", "model", "none")
_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


@dataclass
class ReploraConfig(LoraConfig):
    latent: int | None = field(default=None, metadata={
        "help": "width k of the shared latent matrices Â, B̂ [r, k] the factors are generated "
                "from (default: r)"})
    hidden: int | None = field(default=None, metadata={
        "help": "width h of the generators' hidden layer (default: 4·r; at least r, or the "
                "factors could not reach rank r)"})
    activation: str = field(default="gelu", metadata={
        "help": "the generators' non-linearity: gelu, relu, tanh, or identity (the linear "
                "reparameterisation)"})
    share: str = field(default="block", metadata={
        "help": "which projections share the latent matrices and the first generator layer: "
                "'block' (those of one numbered block, e.g. query and value of "
                "encoder.layer.3), 'model' (all of them) or 'none'"})

    def validate(self) -> None:
        super().validate()
        if self.rank_pattern:
            raise ConfigError("replora takes no rank_pattern: projections that share a "
                              "generator share its rank",
                              hint="Use one r (alpha_pattern still works)")
        for name in ("latent", "hidden"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value <= 0):
                raise ConfigError(f"`{name}` must be a positive integer or null; got {value!r}")
        if self.hidden is not None and self.hidden < self.r:
            raise ConfigError(f"`hidden` must be at least r={self.r}; got {self.hidden}: "
                              f"A = H·Wᵀ has rank at most `hidden`")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"`activation` must be one of {', '.join(ACTIVATIONS)}; got "
                              f"{self.activation!r}")
        if self.share not in SHARING:
            raise ConfigError(f"`share` must be one of {', '.join(SHARING)}; got "
                              f"{self.share!r}")

    @property
    def latent_width(self) -> int:
        return self.latent or self.r

    @property
    def hidden_width(self) -> int:
        return self.hidden or 4 * self.r

    def group_of(self, path: str) -> str:
        """The sharing group of the module at ``path`` (see ``share``)."""
        if self.share == "model":
            return ""
        if self.share == "none":
            return path
        match = _BLOCK.match(path)
        return match.group(1) if match else path.rpartition(".")[0]
