"""Reading and writing safetensors files defensively (headers first, never pickle)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.errors import FormatError, UnsafeFormatError
from registry_db.digests import parse_json
from registry_db.manifest import DTYPE_SIZES

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class RawTensor:
    """A tensor as stored, without torch: its safetensors dtype name, shape and bytes. A hub
    renders files from these, so serving never imports torch."""

    dtype: str
    shape: tuple[int, ...]
    data: Any  # bytes-like


def raw_parts(tensor: torch.Tensor | RawTensor) -> tuple[str, tuple[int, ...], Any]:
    """``(dtype name, shape, bytes)`` of a torch tensor or a :class:`RawTensor`."""
    if isinstance(tensor, RawTensor):
        return tensor.dtype, tensor.shape, tensor.data
    return dtype_name(tensor.dtype), tuple(tensor.shape), tensor_bytes(tensor)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """A parsed and validated safetensors header."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def refuse_pickle(path: Path) -> None:
    """Raise :class:`UnsafeFormatError` for a pickle-based weights file."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFormatError(f"{path.name} is a pickle file; adapterhub never unpickles "
                                f"untrusted data")


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse and validate the header of a safetensors file without reading tensor data.

    Raises :class:`FormatError` naming the file for anything malformed: a truncated file, a
    header length past the end, invalid JSON, unknown dtypes, offsets that do not match the
    shapes or run past the file.
    """
    path = Path(path)
    refuse_pickle(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, "file is shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER, size - 8):
                raise _corrupt(path, f"header length {length} runs past the end of the "
                                     f"{size}-byte file")
            raw = fh.read(length)
    except FileNotFoundError:
        raise FormatError(f"{path} does not exist") from None
    try:
        header = parse_json(raw, what="header")
    except FormatError as exc:
        raise _corrupt(path, exc.message) from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    data_start = 8 + length
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    tensors = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(path, name, entry, data_start, size)
    return Header(path=path, tensors=tensors, metadata=metadata, data_start=data_start)


def _tensor_info(path: Path, name: str, entry: Any, data_start: int, size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _corrupt(path, f"entry for {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise _corrupt(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    numel = 1
    for d in shape:
        numel *= d
    if offsets[1] - offsets[0] != numel * DTYPE_SIZES[dtype]:
        raise _corrupt(path, f"tensor {name!r}: {offsets[1] - offsets[0]} bytes do not hold "
                             f"shape {shape} of {dtype}")
    if data_start + offsets[1] > size:
        raise _corrupt(path, f"tensor {name!r} runs past the end of the file (truncated?)")
    return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def _corrupt(path: Path, reason: str) -> FormatError:
    return FormatError(f"{path.name} is not a valid safetensors file: {reason}",
                       hint="Re-export it or fetch it again")


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, after validating its header."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise _corrupt(Path(path), str(exc)) from None


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str],
                 metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temp file in the same directory, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    contiguous = {k: v.detach().contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(contiguous, tmp, metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _torch_dtypes() -> dict[str, torch.dtype]:
    import torch

    return {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
            "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16,
            "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32, "I64": torch.int64,
            "U64": torch.uint64, "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn,
            "F8_E5M2": torch.float8_e5m2}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.bfloat16`` → ``"BF16"``)."""
    for name, value in _torch_dtypes().items():
        if value == dtype:
            return name
    raise FormatError(f"dtype {dtype} cannot be stored in safetensors")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name (``"BF16"`` → ``torch.bfloat16``)."""
    try:
        return _torch_dtypes()[name]
    except KeyError:
        raise FormatError(f"unknown tensor dtype {name!r}") from None


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, in row-major order."""
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def tensor_digest(tensor: torch.Tensor) -> str:
    """``"sha256:…"`` of a tensor's raw bytes (dtype and shape live in the manifest)."""
    return "sha256:" + hashlib.sha256(tensor_bytes(tensor)).hexdigest()


def read_tensor(path: str | os.PathLike[str], info: TensorInfo) -> torch.Tensor:
    """The tensor ``info`` describes, read from ``path`` alone (one copy, no mmap)."""
    import torch

    buffer = bytearray(info.nbytes)
    with open(path, "rb") as fh:
        fh.seek(info.start)
        if fh.readinto(buffer) != info.nbytes:
            raise _corrupt(Path(path), f"tensor {info.name!r} is truncated")
    if not buffer:
        return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
    return torch.frombuffer(buffer, dtype=torch_dtype(info.dtype)).reshape(info.shape)


class SafetensorsWriter:
    """Writes a safetensors file one tensor at a time, holding one tensor in memory at most.

    Data goes to a temporary body file beside ``path``; :meth:`close` writes the header and
    the body into ``path`` (through a temp file and a rename). Use as a context manager: an
    exception removes everything written.
    """

    def __init__(self, path: str | os.PathLike[str], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.entries: dict[str, dict[str, Any]] = {}
        fd, self._body_path = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                               suffix=".body")
        self._body = os.fdopen(fd, "wb")
        self._offset = 0

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data written so far."""
        return self._offset

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append one tensor (written in row-major order, little-endian)."""
        self.add_bytes(name, dtype_name(tensor.dtype), tuple(tensor.shape), tensor_bytes(tensor))

    def add_bytes(self, name: str, dtype: str, shape: tuple[int, ...], data: Any) -> None:
        """Append raw tensor bytes (a tensor copied from another file, byte for byte)."""
        if name in self.entries:
            raise FormatError(f"tensor {name!r} written twice to {self.path.name}")
        size = len(memoryview(data).cast("B"))
        self._body.write(data)
        self.entries[name] = {"dtype": dtype, "shape": list(shape),
                              "data_offsets": [self._offset, self._offset + size]}
        self._offset += size

    def close(self) -> None:
        self._body.close()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, open(self._body_path, "rb") as body:
                out.write(encode_header(self.entries, self.metadata))
                shutil.copyfileobj(body, out, 16 << 20)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            Path(self._body_path).unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop everything written."""
        self._body.close()
        Path(self._body_path).unlink(missing_ok=True)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_safetensors_stream(path: str | os.PathLike[str],
                             tensors: dict[str, tuple[str, tuple[int, ...], str]],
                             read: Callable[[list[str]], Iterable[tuple[str, Any]]],
                             metadata: dict[str, str] | None = None) -> None:
    """Write what :func:`save_tensors` would (the same header, in a fixed order, and the
    same data), atomically, from ``{name: (dtype, shape, blob digest)}`` and ``read``
    (digests → ``(digest, pieces)`` in order, ``pieces`` an iterable of buffers), holding
    one piece at a time (and blobs that several tensors share until their last use). The
    file appears only if ``read`` raises nothing. Needs no torch."""
    order = sorted(tensors, key=lambda n: (-DTYPE_SIZES[tensors[n][0]], n))
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        dtype, shape, _ = tensors[name]
        size = DTYPE_SIZES[dtype] * math.prod(shape)
        entries[name] = {"dtype": dtype, "shape": list(shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    digests = [tensors[n][2] for n in order]
    uses = {d: digests.count(d) for d in set(digests)}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            # as safetensors writes it (save_tensors): names sorted, fields in this order
            out.write(encode_header({n: entries[n] for n in sorted(entries)},
                                    {"format": "pt", **(metadata or {})}))
            kept: dict[str, bytearray] = {}
            arriving = iter(read(list(dict.fromkeys(digests))))
            for digest in digests:
                uses[digest] -= 1
                if digest in kept:
                    out.write(kept.pop(digest) if not uses[digest] else kept[digest])
                    continue
                got, pieces = next(arriving)
                if got != digest:
                    raise FormatError(f"expected blob {digest}, read {got}")
                copy = bytearray() if uses[digest] else None
                for piece in pieces:
                    out.write(piece)
                    if copy is not None:
                        copy += piece
                if copy is not None:
                    kept[digest] = copy
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safetensors_bytes(tensors: dict[str, tuple[str, tuple[int, ...], Any]],
                      metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file from raw tensors ``{name: (dtype, shape, bytes)}``, byte for byte
    the same for the same input (sorted header keys; tensors ordered by element size, then
    name, so every tensor stays aligned; header padded with spaces to 8 bytes).

    Needs no torch: a hub renders files straight from stored blobs with it.
    """
    order = sorted(tensors, key=lambda n: (-DTYPE_SIZES[tensors[n][0]], n))
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        dtype, shape, data = tensors[name]
        size = memoryview(data).nbytes
        entries[name] = {"dtype": dtype, "shape": list(shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    return b"".join([encode_header(entries, metadata, sort_keys=True),
                     *(memoryview(tensors[n][2]).cast("B") for n in order)])


def encode_header(entries: dict[str, dict[str, Any]], metadata: dict[str, str] | None = None,
                  *, sort_keys: bool = False) -> bytes:
    """What comes before a safetensors file's data: the 8-byte little-endian length and the
    JSON header (``__metadata__`` first, then ``entries`` in order, or every key sorted),
    padded with spaces to a multiple of 8 so the data stays aligned, as safetensors does.
    The one encoder every writer here uses."""
    header = {"__metadata__": dict(metadata), **entries} if metadata else dict(entries)
    raw = json.dumps(header, sort_keys=sort_keys, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw
