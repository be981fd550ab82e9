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
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from adapterhub_qlora.codes import bounds4, code4

LUT_BINS = 65536


#: elements per quantisation work item (every blocksize divides it): at torch's parallel
#: grain size, so each op on a chunk runs on one thread, and chunks are spread over a few
#: Python threads instead (torch ops release the GIL). On a busy machine this beats letting
#: every op fork and join its own OpenMP team: one descheduled thread no longer stalls each op.
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

    _in_chunks(work, full, max(CHUNK // blocksize, 1) * blocksize)
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

    Two codes at a time: each packed byte indexes a 256-entry table of the two code values it
    holds (2 KB, one complex64 per byte: a 1-D ``index_select`` of 8-byte items is the fastest
    gather torch has on CPU); the absmax of each block scales them in one broadcast multiply
    in fp32, then one cast to ``dtype`` (for fp32, the multiply writes the output directly).
    Work items of up to :data:`DEQUANT_CHUNK` elements, spread evenly over the threads, reuse
    per-thread buffers, so nothing is allocated per item.
    """
    n = math.prod(int(d) for d in shape)
    data = packed.reshape(-1)
    if data.dtype != torch.uint8:
        data = data.view(torch.uint8)
    absmax = absmax.to(torch.float32)
    out = torch.empty(n, dtype=dtype, device=data.device)
    rem = n % blocksize
    full = n - rem
    pairs = _pair_codes(kind, data.device)
    scales = absmax.unsqueeze(1)
    rows = out[:full].view(-1, blocksize)

    def work(start: int, stop: int) -> None:
        index, values = _buffers((stop - start) // 2, data.device)
        index.copy_(data[start // 2:stop // 2])
        torch.index_select(pairs, 0, index, out=values)
        block = values.view(torch.float32).view(-1, blocksize)
        first, last = start // blocksize, stop // blocksize
        if dtype == torch.float32:
            torch.mul(block, scales[first:last], out=rows[first:last])
        else:
            rows[first:last].copy_(block.mul_(scales[first:last]))

    _in_chunks(work, full, _even_step(full, blocksize))
    if rem:
        values = _pair_table(kind, data.device)[data[full // 2:].long()].view(-1)[:rem]
        out[full:].copy_(values.mul_(absmax[-1]))
    return out.view(tuple(shape))


#: elements per dequantisation work item, at most: few large items keep torch's per-op
#: overhead small; each thread's reused buffers hold 6 bytes per element (int32 index per
#: byte, two fp32 values)
DEQUANT_CHUNK = 1 << 20

_BUFFERS = threading.local()


def _buffers(pairs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This thread's int32 index and complex64 value buffers, ``pairs`` long (grown as needed,
    never past a work item)."""
    have = _BUFFERS.__dict__.setdefault("by_device", {})
    index, values = have.get(device, (None, None))
    if index is None or index.numel() < pairs:
        # normal tensors even under inference mode, so that any later call may write them
        with torch.inference_mode(False):
            index = torch.empty(pairs, dtype=torch.int32, device=device)
            values = torch.empty(pairs, dtype=torch.complex64, device=device)
        have[device] = (index, values)
    return index[:pairs], values[:pairs]


def _even_step(total: int, blocksize: int) -> int:
    """A work item size in whole blocks: at most :data:`DEQUANT_CHUNK` elements (or one
    block), and as many items as a multiple of the thread count, so all threads finish
    together."""
    threads = max(torch.get_num_threads(), 1)
    blocks = max(-(-total // blocksize), 1)
    per_item = max(DEQUANT_CHUNK // blocksize, 1)
    items = -(-blocks // per_item)
    items = -(-items // threads) * threads
    return max(-(-blocks // items), 1) * blocksize


def _in_chunks(work: Callable[[int, int], None], total: int, step: int) -> None:
    """Call ``work(start, stop)`` over ``[0, total)`` in chunks of ``step`` (whole blocks),
    in parallel.

    The calling thread and ``torch.get_num_threads() - 1`` pool threads each take the next
    chunk from one shared iterator until none is left. The caller's grad and inference modes
    (thread-local in torch) are set in the pool threads too.
    """
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
def _pair_codes(kind: str, device: torch.device) -> torch.Tensor:
    """:func:`_pair_table` with each byte's two fp32 values as one complex64: ``[256]``."""
    return _pair_table(kind, device).view(torch.complex64).view(-1)


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
