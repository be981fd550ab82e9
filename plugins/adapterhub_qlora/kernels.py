"""Blockwise 4-bit and 8-bit quantisation in plain PyTorch, bit-exact with bitsandbytes (CPU).

The arithmetic follows bitsandbytes operation for operation, because a different but
"equivalent" formula changes codes at block and threshold edges:

* 4-bit (``quantize_4bit``): blocks of ``blocksize`` consecutive elements of the flattened
  weight; ``absmax`` per block in fp32; full blocks are scaled by ``x · (1/absmax)`` (absmax
  clamped to 1e-38 so an all-zero block scales to 0), the trailing partial block by
  ``x / absmax``; clamp to [-1, 1]; nearest code, a value on a threshold taking the lower one;
  an odd element count is padded with one 0.0 before packing; two codes per byte, the first
  element in the high nibble.
* 8-bit (``quantize_8bit``, the double-quantisation step): bitsandbytes' CPU kernel scales by
  ``x · (1/absmax)`` and looks the code up in a 65,536-bin table of the [-1, 1] range (bin
  ``trunc(((v + 1) · 0.5) · 65535 + 0.5)``, each bin holding the nearest code of its left
  edge), so a value within ~1.5e-5 of a midpoint can take the farther code. That rounding is
  reproduced here exactly; dequantisation does not depend on it.
* Dequantisation is ``code[c] · absmax`` in fp32, then one cast to the output dtype.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from adapterhub_qlora.codes import bounds4, code4

LUT_BINS = 65536


#: elements per work item (every blocksize divides it): at torch's parallel grain size, so
#: each op on a chunk runs on one thread, and chunks are spread over a few Python threads
#: instead (torch ops release the GIL). On a busy machine this beats letting every op fork
#: and join its own OpenMP team: one descheduled thread no longer stalls each op.
CHUNK = 1 << 15


def quantize_4bit(weight: torch.Tensor, kind: str, blocksize: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` to packed 4-bit codes.

    Returns ``(packed, absmax)``: packed is uint8 ``[(n + 1) // 2, 1]``, absmax fp32
    ``[ceil(n / blocksize)]``.
    """
    flat = weight.detach().reshape(-1)
    n = flat.numel()
    rem = n % blocksize
    full = n - rem
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=flat.device)
    absmax = torch.empty(full // blocksize + (rem > 0), dtype=torch.float32, device=flat.device)

    def work(start: int, stop: int) -> None:
        body = flat[start:stop].view(-1, blocksize)
        block_absmax = absmax[start // blocksize:stop // blocksize]
        _block_absmax(body, out=block_absmax)
        scaled = body * (1.0 / block_absmax.clamp(min=1e-38)).unsqueeze(1)
        _pack(_codes(scaled.view(-1), kind), out=packed[start // 2:stop // 2])

    _in_chunks(work, full, blocksize)
    if rem:
        tail = flat[full:].float()
        absmax[-1] = tail.abs().max().clamp(min=1e-38)  # stored clamped, unlike full blocks
        scaled = tail / absmax[-1]
        if rem & 1:  # the odd element count is padded with one 0.0 before packing
            scaled = torch.cat([scaled, scaled.new_zeros(1)])
        _pack(_codes(scaled, kind), out=packed[full // 2:])
    return packed.unsqueeze(1), absmax


def _block_absmax(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """``max |x|`` of each row in fp32, without materialising ``|x|``."""
    low, high = torch.aminmax(blocks, dim=1)
    torch.maximum(high.float(), low.float().neg_(), out=out)
    out.add_(0.0)  # -0.0 (an all-zero block) → +0.0, as |x| gives


def _codes(scaled: torch.Tensor, kind: str) -> torch.Tensor:
    """The 4-bit code of each scaled value (clamped to [-1, 1] here, in place).

    The code of x is the number of decision thresholds strictly below it (``bucketize`` with
    ``right=False``); counting with one comparison per threshold is faster than a search.
    """
    thresholds, order = _thresholds(kind)
    x = scaled.clamp_(-1.0, 1.0)
    codes = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for threshold in thresholds:
        codes.add_(x > threshold)
    if kind != "nf4":
        codes = order.to(codes.device)[codes.long()]
    return codes


@functools.cache
def _thresholds(kind: str) -> tuple[tuple[float, ...], torch.Tensor]:
    bounds, order = bounds4(kind)
    return tuple(bounds.tolist()), order.to(torch.uint8)  # fp32 values, exact as Python floats


def _pack(codes: torch.Tensor, out: torch.Tensor) -> None:
    """Two codes per byte, the first in the high nibble."""
    pairs = codes.view(-1, 2)
    out.copy_((pairs[:, 0] << 4).bitwise_or_(pairs[:, 1]))


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, kind: str, blocksize: int,
                    shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """The weight of ``shape`` and ``dtype`` that packed 4-bit codes and their absmax stand for.

    Four codes at a time: each pair of packed bytes, read as one uint16, indexes a table of
    the four code values it holds (16 bytes, gathered as one complex128: torch's 1-D
    ``index_select`` copies those faster than rows of a 2-D table).
    """
    n = math.prod(int(d) for d in shape)
    data = packed.reshape(-1)
    if data.dtype != torch.uint8:
        data = data.view(torch.uint8)
    if data.storage_offset() % 2:  # a uint16 view needs 2-byte alignment
        data = data.clone()
    absmax = absmax.to(torch.float32)
    out = torch.empty(n, dtype=dtype, device=data.device)
    rem = n % blocksize
    full = n - rem
    quads = _quad_table(kind, data.device)
    words = data[:full // 2].view(torch.uint16)
    scales = absmax.unsqueeze(1)
    rows = out[:full].view(-1, blocksize)

    def work(start: int, stop: int) -> None:
        index = words[start // 4:stop // 4].to(torch.int32)
        values = quads.index_select(0, index).view(torch.float32).view(-1, blocksize)
        first, last = start // blocksize, stop // blocksize
        rows[first:last].copy_(values.mul_(scales[first:last]))

    _in_chunks(work, full, blocksize)
    if rem:
        values = _pair_table(kind, data.device)[data[full // 2:].long()].view(-1)[:rem]
        out[full:].copy_(values.mul_(absmax[-1]))
    return out.view(tuple(shape))


def _in_chunks(work: Callable[[int, int], None], total: int, blocksize: int) -> None:
    """Call ``work(start, stop)`` over ``[0, total)`` in chunks of whole blocks, in parallel.

    The calling thread and ``torch.get_num_threads() - 1`` pool threads each take the next
    chunk from one shared iterator until none is left. The caller's grad and inference modes
    (thread-local in torch) are set in the pool threads too.
    """
    step = max(CHUNK // blocksize, 1) * blocksize
    spans = iter([(start, min(start + step, total)) for start in range(0, total, step)])
    helpers = min(torch.get_num_threads(), -(-total // step)) - 1
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def drain() -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            for span in spans:  # a list iterator hands out each item once, across threads
                work(*span)

    futures = [_pool(helpers).submit(drain) for _ in range(helpers)] if helpers > 0 else []
    try:
        drain()
    finally:
        for future in futures:
            future.result()


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool per process (a forked child must not reuse its parent's threads)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="adapterhub-nf4")
    return _POOLS[key]


@functools.cache
def _pair_table(kind: str, device: torch.device) -> torch.Tensor:
    """``[256, 2]``: the two code values (high nibble, low nibble) each byte stands for."""
    code = code4(kind).to(device)
    byte = torch.arange(256, device=device)
    return torch.stack([code[byte >> 4], code[byte & 0xF]], dim=1).contiguous()


@functools.cache
def _quad_table(kind: str, device: torch.device) -> torch.Tensor:
    """The four code values of two consecutive packed bytes, indexed by the bytes read as one
    native-endian uint16: 65,536 fp32 quadruples, each viewed as one complex128."""
    pairs = _pair_table(kind, torch.device("cpu"))
    both = torch.arange(65536, dtype=torch.int32)
    byte_pairs = torch.stack([both >> 8, both & 0xFF], dim=1).to(torch.uint8).contiguous()
    keys = byte_pairs.view(torch.uint16).view(-1).long()
    table = torch.empty(65536, 4)
    table[keys] = torch.cat([pairs[byte_pairs[:, 0].long()], pairs[byte_pairs[:, 1].long()]],
                            dim=1)
    return table.view(torch.complex128).view(-1).to(device)


def quantize_8bit(x: torch.Tensor, code: torch.Tensor, blocksize: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise 8-bit quantisation of a fp32 vector with bitsandbytes' CPU rounding.

    Returns ``(codes, absmax)``: uint8 codes, one per element, and fp32 absmax per block. An
    all-zero block stores absmax 0 and code 0.
    """
    flat = x.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    blocks = -(-n // blocksize)
    padded = torch.zeros(blocks * blocksize, dtype=torch.float32, device=flat.device)
    padded[:n] = flat
    rows = padded.view(blocks, blocksize)
    absmax = rows.abs().amax(dim=1)
    scaled = (rows * (1.0 / absmax).unsqueeze(1)).clamp_(-1.0, 1.0)
    position = ((scaled + 1.0) * 0.5) * float(LUT_BINS - 1) + 0.5
    bins = position.to(torch.int32).clamp_(0, LUT_BINS - 1)
    codes = _bin_table(tuple(code.tolist()), flat.device)[bins]
    codes[absmax == 0] = 0
    return codes.view(-1)[:n].clone(), absmax


@functools.cache
def _bin_table(code: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """For each of the 65,536 points ``-1 + 2i/65535`` of [-1, 1]: the index of the nearest
    code (the lower one on a tie), as bitsandbytes builds its table."""
    values = torch.tensor(code, dtype=torch.float32)
    midpoints = 0.5 * (values[:-1] + values[1:])
    edges = -1.0 + (2.0 * torch.arange(LUT_BINS, dtype=torch.float32)) / float(LUT_BINS - 1)
    return torch.searchsorted(midpoints, edges, side="left").to(torch.uint8).to(device)


def dequantize_8bit(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                    blocksize: int) -> torch.Tensor:
    """``code[c] · absmax`` per element in fp32 (the inverse of :func:`quantize_8bit`)."""
    values = code.to(device=codes.device, dtype=torch.float32)[codes.reshape(-1).long()]
    n = values.numel()
    scale = absmax.to(torch.float32).repeat_interleave(blocksize)[:n]
    return values.mul_(scale)
