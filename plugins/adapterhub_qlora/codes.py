"""The code books of bitsandbytes' 4-bit types and of its 8-bit dynamic map.

Each code book is a fp32 tensor indexed by the stored code. The values are part of the on-disk
format (a checkpoint stores them as ``quant_map`` / ``nested_quant_map``), so they are fixed
here exactly as bitsandbytes has them.
"""

from __future__ import annotations

import functools

import torch

#: NF4 (Dettmers et al. 2023): quantiles of N(0, 1) rescaled to [-1, 1], zero exact. Stored
#: rather than recomputed: recomputing with scipy agrees only to ~1e-7.
NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

#: FP4 (1 sign, 2 exponent, 1 mantissa bit, exponent bias 2) in bit-pattern order, before the
#: division by the largest magnitude that maps it onto [-1, 1].
FP4_RAW = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
           -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)


@functools.cache
def code4(kind: str) -> torch.Tensor:
    """The 16-entry code book of ``"nf4"`` or ``"fp4"`` (fp32, index = stored 4-bit code)."""
    if kind == "nf4":
        return torch.tensor(NF4, dtype=torch.float32)
    if kind == "fp4":
        raw = torch.tensor(FP4_RAW, dtype=torch.float32)
        return raw / raw.abs().max()
    raise ValueError(f"unknown 4-bit code {kind!r}")


@functools.cache
def bounds4(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decision thresholds between neighbouring sorted codes, and the sorted → stored order.

    A value goes to the code whose interval holds it; a value exactly on a threshold goes to
    the lower code (``bucketize(right=False)``), as in the CUDA ``dQuantizeNF4`` tree.
    """
    code = code4(kind)
    order = torch.argsort(code)
    return (code[order[:-1]] + code[order[1:]]) / 2, order


@functools.cache
def dynamic_map() -> torch.Tensor:
    """The signed 8-bit dynamic map (Dettmers 2015) used for double quantisation.

    For exponent i = 0..6 the positive half holds the midpoints of ``2**i + 1`` linearly
    spaced points in [0.1, 1], scaled by ``10**(i - 6)``; the negative half mirrors it; 0 and 1
    complete the 256 entries, sorted ascending. Arithmetic in fp32 as bitsandbytes does it.
    """
    values: list[float] = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        values += ((10 ** (i - 6)) * means).tolist()
        values += (-(10 ** (i - 6)) * means).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)
