"""Rewriting safetensors data a block of rows at a time, at known output offsets.

The apply engine's inner loop. Because the output layout (header, then every tensor's byte
range) is known before anything is written, each tensor is an independent job writing at its
own offsets (``pwrite``, ``copy_file_range``): jobs run on a few threads and in any order.

:meth:`Streamer.stream` reads a block of a tensor's rows into a reusable per-thread buffer,
widens it to fp32 (fp64 for fp64 tensors), adds each :class:`Term`'s rows (``addmm_`` for
low-rank factors, ``add_`` for a dense delta), casts once to the output dtype, checks for
NaN/Inf and writes it. Blocks of :data:`BLOCK_ELEMENTS` stay in the CPU cache, and nothing the
size of a tensor is allocated (except a dense ΔW, for methods without low-rank factors).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapterhub.errors import FormatError
from adapterhub.methods import check_finite
from adapterhub.safetensors_io import DTYPE_SIZES, TensorInfo

if TYPE_CHECKING:
    import torch

BLOCK_ELEMENTS = 512 * 1024  # elements per block of rows
COPY_CHUNK = 64 * 1024 * 1024  # bytes per copy_file_range call


@dataclass
class Term:
    """``weight · ΔW`` of one adapter on one tensor: row-sliceable factors or a dense matrix."""

    weight: float
    left: torch.Tensor | None = None  # [rows, k]
    right: torch.Tensor | None = None  # [k, cols]
    dense: torch.Tensor | None = None  # [rows, cols]


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor seen as a matrix: its first dimension by everything else."""
    rows = shape[0] if shape else 1
    numel = 1
    for d in shape:
        numel *= d
    return rows, (numel // rows if rows else 0)


class Streamer:
    """Rewrites tensors block by block with per-thread buffers (see the module docstring)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _buffer(self, kind: str, nbytes: int) -> torch.Tensor:
        import torch

        buffers: dict[str, Any] = self._local.__dict__.setdefault("buffers", {})
        have = buffers.get(kind)
        if have is None or have.numel() < nbytes:
            have = buffers[kind] = torch.empty(nbytes, dtype=torch.uint8)
        return have[:nbytes]

    def stream(self, src_fd: int, dst_fd: int, info: TensorInfo, dst_offset: int,
               out_dtype: str, terms: list[Term]) -> None:
        """Write ``info``'s tensor plus ``Σ weight·ΔW`` of ``terms`` as ``out_dtype`` at
        ``dst_offset`` of ``dst_fd``."""
        import torch

        from adapterhub.safetensors_io import torch_dtype

        rows, cols = rows_cols(info.shape)
        if rows == 0 or cols == 0:
            return
        in_size, out_size = DTYPE_SIZES[info.dtype], DTYPE_SIZES[out_dtype]
        src_type, dst_type = torch_dtype(info.dtype), torch_dtype(out_dtype)
        work_type = torch.float64 if info.dtype == "F64" else torch.float32
        step = max(1, BLOCK_ELEMENTS // cols)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            n = (r1 - r0) * cols
            raw = self._buffer("in", n * in_size)
            read_into(src_fd, raw, info.start + r0 * cols * in_size, info.name)
            block = raw.view(src_type).view(r1 - r0, cols)
            if terms:
                work = self._buffer("work", n * work_type.itemsize).view(work_type)
                block = work.view(r1 - r0, cols).copy_(block)
                for term in terms:
                    if term.left is not None:
                        block.addmm_(term.left[r0:r1], term.right, alpha=term.weight)
                    else:
                        block.add_(term.dense[r0:r1], alpha=term.weight)
            if block.dtype != dst_type:
                out = self._buffer("out", n * out_size).view(dst_type)
                block = out.view(r1 - r0, cols).copy_(block)
            # any NaN or Inf makes the sum non-finite; a sum that merely overflows is let
            # through by the exact check
            if terms and not torch.isfinite(block.sum()):
                check_finite(block, f"{info.name} ({out_dtype})")
            pwrite_all(dst_fd, memoryview(block.reshape(-1).view(torch.uint8).numpy()),
                       dst_offset + r0 * cols * out_size)


def read_into(fd: int, buffer: torch.Tensor, offset: int, name: str) -> None:
    """Fill a uint8 tensor with the file's bytes from ``offset``."""
    view = memoryview(buffer.numpy())
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise FormatError(f"{name}: the file ended early (truncated?)")
        view, offset = view[n:], offset + n


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def copy_range(src_fd: int, dst_fd: int, src_offset: int, dst_offset: int,
               count: int) -> None:
    """Copy ``count`` bytes between two files at given offsets, inside the kernel."""
    while count > 0:
        size = min(count, COPY_CHUNK)
        try:
            n = os.copy_file_range(src_fd, dst_fd, size, src_offset, dst_offset)
        except OSError:  # a filesystem without it: copy through a buffer
            n = len(data := os.pread(src_fd, size, src_offset))
            pwrite_all(dst_fd, data, dst_offset)
        if n == 0:
            raise FormatError(f"unexpected end of file while copying at byte {src_offset}")
        src_offset, dst_offset, count = src_offset + n, dst_offset + n, count - n
