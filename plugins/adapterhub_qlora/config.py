"""The config of the 4-bit quantizers (``nf4``, ``fp4``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterhub import ConfigError, QuantizerConfig

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
#: absmax values per block of the second (8-bit) level; fixed by bitsandbytes
NESTED_BLOCKSIZE = 256


@dataclass
class Bnb4bitConfig(QuantizerConfig):
    blocksize: int = field(default=64, metadata={
        "help": "consecutive weights sharing one absmax: "
                + ", ".join(map(str, BLOCKSIZES))})
    double_quant: bool = field(default=True, metadata={
        "help": "quantize the absmax values too (8-bit dynamic map, blocks of 256, mean "
                "offset): 0.127 instead of 0.5 bits per parameter for the constants"})
    compute_dtype: str = field(default="bfloat16", metadata={
        "help": f"dtype the quantized Linear computes in: {', '.join(COMPUTE_DTYPES)}"})

    def validate(self) -> None:
        if self.blocksize not in BLOCKSIZES or isinstance(self.blocksize, bool):
            raise ConfigError(f"`blocksize` must be one of {', '.join(map(str, BLOCKSIZES))}; "
                              f"got {self.blocksize!r}")
        if not isinstance(self.double_quant, bool):
            raise ConfigError(f"`double_quant` must be true or false; got {self.double_quant!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"`compute_dtype` must be one of {', '.join(COMPUTE_DTYPES)}; "
                              f"got {self.compute_dtype!r}")
