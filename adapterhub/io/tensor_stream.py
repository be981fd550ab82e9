"""Rewriting safetensors data a block of rows at a time, at known output offsets.

The apply engine's inner loop. Because the output layout (header, then every tensor's byte
range) is known before anything is written, each tensor is an independent job writing at its
own offsets (``pwrite``, ``copy_file_range``): jobs run on a few threads and in any order.

:meth:`Streamer.stream` reads a block of a tensor's rows into a reusable per-thread buffer,
widens it to fp32 (fp64 for fp64 tensors), adds each :class:`Term`'s rows (``addmm_`` for
low-rank factors, ``add_`` for a dense delta), casts once to the output dtype, checks for
NaN/Inf and writes it. Blocks of :data:`BLOCK_ELEMENTS` stay in the CPU cache, and nothing the
size of a tensor is allocated (except a dense ΔW, for methods without low-rank factors).
:meth:`Streamer.stream_tensor` does the same for a tensor already in memory (a dequantized
weight); :class:`MemoryBudget` bounds how many such whole tensors jobs hold at once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapterhub.contracts.numerics import check_finite
from adapterhub.errors import FormatError
from adapterhub.io.safetensors import DTYPE_SIZES, TensorInfo

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

    def add_to(self, block: torch.Tensor, r0: int, r1: int) -> None:
        """Add rows ``r0:r1`` of ``weight · ΔW`` into ``block`` (fp32 or fp64, in place)."""
        if self.left is not None:
            block.addmm_(self.left[r0:r1], self.right, alpha=self.weight)
        else:
            block.add_(self.dense[r0:r1], alpha=self.weight)


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
        from adapterhub.io.safetensors import torch_dtype

        rows, cols = rows_cols(info.shape)
        in_size = DTYPE_SIZES[info.dtype]
        src_type = torch_dtype(info.dtype)

        def read(r0: int, r1: int) -> torch.Tensor:
            raw = self._buffer("in", (r1 - r0) * cols * in_size)
            read_into(src_fd, raw, info.start + r0 * cols * in_size, info.name)
            return raw.view(src_type).view(r1 - r0, cols)

        self._write(read, (rows, cols), info.dtype == "F64", dst_fd, dst_offset, out_dtype,
                    terms, info.name)

    def stream_tensor(self, tensor: torch.Tensor, dst_fd: int, dst_offset: int,
                      out_dtype: str, terms: list[Term], name: str) -> None:
        """:meth:`stream` for a tensor already in memory (a dequantized weight)."""
        import torch

        rows, cols = rows_cols(tuple(tensor.shape))
        matrix = tensor.reshape(rows, cols)
        self._write(lambda r0, r1: matrix[r0:r1], (rows, cols), tensor.dtype == torch.float64,
                    dst_fd, dst_offset, out_dtype, terms, name)

    def _write(self, read: Callable[[int, int], torch.Tensor], matrix: tuple[int, int],
               wide: bool, dst_fd: int, dst_offset: int, out_dtype: str, terms: list[Term],
               name: str) -> None:
        """Each block of rows from ``read(r0, r1)``: widened, plus the terms, cast, written."""
        import torch

        from adapterhub.io.safetensors import torch_dtype

        rows, cols = matrix
        out_size, dst_type = DTYPE_SIZES[out_dtype], torch_dtype(out_dtype)
        work_type = torch.float64 if wide else torch.float32
        for r0, r1 in row_blocks(matrix):
            n = (r1 - r0) * cols
            block = read(r0, r1)
            if terms:
                work = self._buffer("work", n * work_type.itemsize).view(work_type)
                block = work.view(r1 - r0, cols).copy_(block)
                for term in terms:
                    term.add_to(block, r0, r1)
            if block.dtype != dst_type:
                out = self._buffer("out", n * out_size).view(dst_type)
                block = out.view(r1 - r0, cols).copy_(block)
            # any NaN or Inf makes the sum non-finite; a sum that merely overflows is let
            # through by the exact check
            if terms and not torch.isfinite(block.sum()):
                check_finite(block, f"{name} ({out_dtype})")
            pwrite_all(dst_fd, memoryview(block.reshape(-1).view(torch.uint8).numpy()),
                       dst_offset + r0 * cols * out_size)


def row_blocks(shape: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """``(r0, r1)`` spans of rows (first dimension) holding about :data:`BLOCK_ELEMENTS`."""
    rows, cols = rows_cols(shape)
    if rows == 0 or cols == 0:
        return
    step = max(1, BLOCK_ELEMENTS // cols)
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


class MemoryBudget:
    """Lets jobs that hold whole tensors run together only while their sizes fit ``limit``
    bytes; a job larger than the limit runs alone. Peak memory stays under
    ``max(limit, largest job)``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._used == 0 or self._used + nbytes <= self.limit)
            self._used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()


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
