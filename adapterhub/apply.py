"""Deployment builds: fold adapters into a base checkpoint, streaming.

``apply_adapters(base, adapters, out)`` reads the base checkpoint's safetensors headers, checks
every adapter against them, then writes a new checkpoint with the same files, the same tensor
order and the same index:

- a tensor no adapter touches is copied as raw bytes (``copy_file_range``), never decoded;
- a targeted tensor gets ``Σ weight_i · ΔW_i`` from each adapter's merge kernel
  (:meth:`AdapterMethod.low_rank` factors, else :meth:`AdapterMethod.delta_weight`), added in
  fp32 and cast once, to its own dtype or to ``dtype``, a block of rows at a time
  (:mod:`adapterhub.tensor_stream`);
- with ``dtype``, the other floating tensors are cast too and the headers rewritten.

Peak memory is the runtime, the adapters and a few MB of buffers per thread, whatever the
model's size. Everything goes to a hidden directory beside ``out`` that is renamed into place
at the end, so an interrupted build leaves no ``out``; a later build removes what a killed one
left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.checkpoint import INDEX_FILE, Checkpoint, fingerprint_of
from adapterhub.compat import check_base
from adapterhub.errors import (AdapterHubError, FormatError, IncompatibleBaseModelError,
                               MergeError, OutputExistsError, WriteError)
from adapterhub.safetensors_io import DTYPE_SIZES, PICKLE_SUFFIXES, Header, TensorInfo
from adapterhub.tensor_stream import Streamer, Term, copy_range, pwrite_all, rows_cols

if TYPE_CHECKING:
    import torch

    from adapterhub.methods import AdapterMethod, MethodConfig
    from adapterhub.package import AdapterPackage

BUILD_RECORD = "adapterhub-build.json"
BUILD_FORMAT = "adapterhub-build/1"
#: ``--dtype`` choices → safetensors dtype names
DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
#: safetensors dtypes a merge may write into (and ``dtype`` casts)
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")
#: files that hold weights in some other layout: never copied, since they would be stale
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".msgpack", ".h5", ".onnx", ".npz",
                   *PICKLE_SUFFIXES)
#: transformers' names for dtypes in config.json
CONFIG_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


@dataclass(frozen=True)
class Fold:
    """One adapted module folded into a checkpoint tensor."""

    adapter: int  # index into the build's adapters
    module: str


@dataclass
class BuildPlan:
    """Everything a build will do, decided from headers and adapters before writing a byte."""

    checkpoint: Checkpoint
    packages: list[AdapterPackage]
    weights: list[float]
    dtype: str | None  # safetensors name every floating tensor is cast to; None keeps each
    folds: dict[str, list[Fold]] = field(default_factory=dict)  # tensor name → folds
    fingerprint_match: list[bool | None] = field(default_factory=list)
    methods: list[tuple[AdapterMethod, MethodConfig]] = field(default_factory=list)
    groups: list[dict[str, dict[str, torch.Tensor]]] = field(default_factory=list)

    def out_dtype(self, info: TensorInfo) -> str:
        return self.dtype if self.dtype and info.dtype in FLOAT_DTYPES else info.dtype

    def out_nbytes(self, info: TensorInfo) -> int:
        return info.nbytes // DTYPE_SIZES[info.dtype] * DTYPE_SIZES[self.out_dtype(info)]


def plan_build(base: str | os.PathLike[str] | Checkpoint,
               adapters: Sequence[str | os.PathLike[str] | AdapterPackage], *,
               weights: Sequence[float] | None = None, dtype: str | None = None) -> BuildPlan:
    """Load the adapters and check each against the base; raise before anything is written.

    ``adapters`` are package objects or anything :func:`adapterhub.formats.read_adapter`
    reads. ``weights`` scale each adapter's ΔW (default 1.0 each); ``dtype`` is ``bf16``,
    ``fp16`` or ``fp32`` (default: every tensor keeps its dtype).
    """
    from adapterhub.formats import read_adapter
    from adapterhub.merging import adapter_weights
    from adapterhub.package import AdapterPackage
    from adapterhub.sources import fold_target

    checkpoint = base if isinstance(base, Checkpoint) else Checkpoint(base)
    if not checkpoint.path.is_dir():
        raise FormatError(f"the base model {checkpoint.path} is a file; apply builds from a "
                          f"checkpoint directory",
                          hint="Point at the directory holding config.json and the "
                               "safetensors files")
    if not adapters:
        raise MergeError("apply needs at least one adapter")
    packages = [a if isinstance(a, AdapterPackage) else read_adapter(a) for a in adapters]
    weights = adapter_weights(weights, len(packages))
    if dtype is not None and dtype not in DTYPES:
        raise MergeError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    plan = BuildPlan(checkpoint, packages, weights, DTYPES.get(dtype) if dtype else None,
                     methods=[(p.method, p.config) for p in packages],
                     groups=[p.method.group_tensors(p.tensors) for p in packages])
    for index, package in enumerate(packages):
        label = f"adapter {index + 1} ({package.manifest.method_name}, " \
                f"{package.digest[:19]})"
        fold_target(package, None)  # a mixture of experts has no single ΔW: refuse it here
        if package.manifest.quantization:
            raise IncompatibleBaseModelError(
                f"{label} was trained on a quantized base "
                f"({package.manifest.quantization.get('name')}); folding it into the "
                f"unquantized weights would not reproduce what it learned",
                hint="Serve it unmerged on the quantized base")
        report = check_base(package.manifest, checkpoint)
        if report.problems:
            more = f" ({len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
            raise IncompatibleBaseModelError(f"{label} does not fit the base model: "
                                             f"{report.problems[0]}{more}")
        plan.fingerprint_match.append(report.fingerprint_match)
        seen: dict[str, str] = {}
        for module, tensor in sorted(report.modules.items()):
            if tensor in seen:
                raise MergeError(f"{label}: modules {seen[tensor]!r} and {module!r} both "
                                 f"resolve to the base tensor {tensor!r}")
            seen[tensor] = module
            info = checkpoint.tensors[tensor].info
            if info.dtype not in FLOAT_DTYPES:
                raise IncompatibleBaseModelError(
                    f"{label}: the base tensor {tensor} is {info.dtype}; apply folds deltas "
                    f"into floating-point weights only ({', '.join(FLOAT_DTYPES)})")
            plan.folds.setdefault(tensor, []).append(Fold(index, module))
    return plan


def apply_adapters(base: str | os.PathLike[str],
                   adapters: Sequence[str | os.PathLike[str] | AdapterPackage],
                   out: str | os.PathLike[str], *, weights: Sequence[float] | None = None,
                   dtype: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Build ``out``: the base checkpoint with ``Σ weight_i · ΔW_i`` folded in; returns the record.

    ``out`` must not exist or be an empty directory. See the module docstring for how tensors
    are written and :func:`plan_build` for the arguments.
    """
    out = Path(out)
    refuse_non_empty(out)
    plan = plan_build(base, adapters, weights=weights, dtype=dtype)
    tmp = out.parent / f".{out.name}.{os.getpid()}.partial"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_builds(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with _single_thread():
            record = _build(plan, tmp, show_progress)
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, AdapterHubError):
            raise WriteError(f"building {out} failed: {exc.strerror or exc}") from exc
        raise
    return record


@contextlib.contextmanager
def _single_thread():
    """Blocks are small and memory-bound: one torch thread per block does them fastest
    (intra-op threads spend more time synchronising, worst of all on a busy machine); the
    build's own thread pool runs several blocks at once instead."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def refuse_non_empty(out: Path) -> None:
    """Raise :class:`OutputExistsError` unless ``out`` is missing or an empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} already exists and is not empty")


def remove_stale_builds(out: Path) -> list[Path]:
    """Delete the hidden work directories that killed builds of ``out`` left behind."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.partial$")
    for entry in out.parent.iterdir() if out.parent.is_dir() else ():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- writing ------------------------------------------------------------------------------


def _build(plan: BuildPlan, tmp: Path, show_progress: bool) -> dict[str, Any]:
    from adapterhub import __version__
    from adapterhub.progress import progress

    checkpoint = plan.checkpoint
    counts = {"merged": 0, "copied": 0, "cast": 0}
    out_entries = []
    streamer = Streamer()
    with ThreadPoolExecutor(_workers(), thread_name_prefix="adapterhub-apply") as pool, \
            progress(total=len(checkpoint.tensors), desc="apply", unit="tensor",
                     disable=not show_progress) as bar:
        for header in checkpoint.headers:
            _write_shard(plan, pool, streamer, header, tmp / header.path.name, counts, bar)
            out_entries += [(name, plan.out_dtype(info), info.shape)
                            for name, info in header.tensors.items()]
    skipped = _copy_other_files(plan, tmp)
    record = {
        "format": BUILD_FORMAT,
        "tool": {"name": "adapterhub", "version": __version__},
        "base": {"name": checkpoint.name, "fingerprint": checkpoint.fingerprint,
                 "files": [f.name for f in checkpoint.files],
                 "tensors": len(checkpoint.tensors)},
        "adapters": [{"digest": p.digest, "method": p.manifest.method_name,
                      "weight": w, "modules": len(p.manifest.base_model.get("modules", {})),
                      "fingerprint_match": match}
                     for p, w, match in zip(plan.packages, plan.weights,
                                            plan.fingerprint_match)],
        "dtype": next((k for k, v in DTYPES.items() if v == plan.dtype), None),
        "tensors": counts,
        "fingerprint": fingerprint_of(out_entries),
        "skipped_files": skipped,
    }
    (tmp / BUILD_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def _workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _write_shard(plan: BuildPlan, pool: ThreadPoolExecutor, streamer: Streamer,
                 header: Header, dst: Path, counts: dict[str, int], bar: Any) -> None:
    """Write one shard as independent jobs at known offsets: the header and any bytes between
    tensors, then every tensor (copied raw, cast, or merged)."""
    ordered = sorted(header.tensors.values(), key=lambda t: t.start)
    rewrite = any(plan.out_dtype(info) != info.dtype for info in ordered)
    src_fd = os.open(header.path, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    futures: list[Future] = []
    try:
        if rewrite:
            head, offsets = _new_layout(plan, header, ordered)
            futures.append(pool.submit(pwrite_all, dst_fd, head, 0))
        else:  # the same layout: header and any gap or tail copied verbatim
            offsets = {info.name: info.start for info in ordered}
            pos = 0
            for start, end in [(info.start, info.end) for info in ordered] + \
                    [(os.fstat(src_fd).st_size,) * 2]:
                if start > pos:
                    futures.append(pool.submit(copy_range, src_fd, dst_fd, pos, pos,
                                               start - pos))
                pos = max(pos, end)
        tensors = []
        for info in ordered:
            kind = "merged" if info.name in plan.folds else \
                "cast" if plan.out_dtype(info) != info.dtype else "copied"
            counts[kind] += 1
            tensors.append(pool.submit(_write_tensor, plan, streamer, src_fd, dst_fd, info,
                                       offsets[info.name], kind))
        futures += tensors
        for future in as_completed(tensors):
            future.result()
            bar.update(1)
        for future in futures:
            future.result()
    finally:
        for future in futures:
            future.cancel()
        wait(futures)  # nothing may write to these descriptors once they are closed
        os.close(src_fd)
        os.close(dst_fd)


def _write_tensor(plan: BuildPlan, streamer: Streamer, src_fd: int, dst_fd: int,
                  info: TensorInfo, offset: int, kind: str) -> None:
    if kind == "copied":
        copy_range(src_fd, dst_fd, info.start, offset, info.nbytes)
    else:
        terms = _terms(plan, info) if kind == "merged" else []
        streamer.stream(src_fd, dst_fd, info, offset, plan.out_dtype(info), terms)


def _new_layout(plan: BuildPlan, header: Header, ordered: list[TensorInfo]
                ) -> tuple[bytes, dict[str, int]]:
    """The header for cast tensors (same key order, same data order) and where each tensor's
    bytes go in the new file."""
    offsets, offset = {}, 0
    for info in ordered:
        offsets[info.name] = [offset, offset + plan.out_nbytes(info)]
        offset += plan.out_nbytes(info)
    entries: dict[str, Any] = {"__metadata__": header.metadata} if header.metadata else {}
    for name, info in header.tensors.items():
        entries[name] = {"dtype": plan.out_dtype(info), "shape": list(info.shape),
                         "data_offsets": offsets[name]}
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
    head = struct.pack("<Q", len(raw)) + raw
    return head, {name: len(head) + begin for name, (begin, _) in offsets.items()}


def _terms(plan: BuildPlan, info: TensorInfo) -> list[Term]:
    """Each fold's ΔW from its method's merge kernel: the exact low-rank factors when the
    method has them (``low_rank``), else the dense ``delta_weight``, both in fp32."""
    rows, cols = rows_cols(info.shape)
    terms = []
    for fold in plan.folds[info.name]:
        method, config = plan.methods[fold.adapter]
        group = plan.groups[fold.adapter][fold.module]
        weight = plan.weights[fold.adapter]
        factors = method.low_rank(fold.module, group, config, info.shape)
        if factors is not None:
            left, right = (f.float().contiguous() for f in factors)
            if left.shape[0] != rows or right.shape[-1] != cols \
                    or left.shape[1] != right.shape[0]:
                raise MergeError(f"{method.name} factors {tuple(left.shape)} and "
                                 f"{tuple(right.shape)} of {fold.module} do not fit "
                                 f"{info.name} {list(info.shape)}")
            terms.append(Term(weight, left=left, right=right))
        else:
            dense = method.delta_weight(fold.module, group, config, info.shape).float()
            if tuple(dense.shape) != info.shape:
                raise MergeError(f"{method.name} delta of {fold.module} has shape "
                                 f"{tuple(dense.shape)}; {info.name} is {list(info.shape)}")
            terms.append(Term(weight, dense=dense.reshape(rows, cols)))
    return terms


def _copy_other_files(plan: BuildPlan, tmp: Path) -> list[str]:
    """Copy config, tokenizer and other small files; return the weight files left out."""
    base = plan.checkpoint.path
    shards = {f.name for f in plan.checkpoint.files}
    skipped: list[str] = []

    def leave_out(directory: str, names: list[str]) -> set[str]:
        out = set()
        for name in names:
            rel = (Path(directory) / name).relative_to(base).as_posix()
            if name.startswith(".") or rel in shards or rel in (INDEX_FILE, BUILD_RECORD):
                out.add(name)
            elif name.lower().endswith(WEIGHT_SUFFIXES) and not Path(directory, name).is_dir():
                out.add(name)
                skipped.append(rel)
        return out

    for entry in sorted(base.iterdir()):
        if entry.name in leave_out(str(base), [entry.name]):
            continue
        if entry.is_dir():
            shutil.copytree(entry, tmp / entry.name, ignore=leave_out)
        elif entry.name == "config.json" and plan.dtype:
            _write_config(entry, tmp / entry.name, plan.dtype)
        else:
            shutil.copyfile(entry, tmp / entry.name)
    index = base / INDEX_FILE
    if index.exists():
        if plan.dtype:
            _write_index(plan, index, tmp / INDEX_FILE)
        else:
            shutil.copyfile(index, tmp / INDEX_FILE)
    return sorted(skipped)


def _write_config(src: Path, dst: Path, dtype: str) -> None:
    """config.json with its dtype entry (``torch_dtype`` or ``dtype``) set to the new dtype."""
    config = json.loads(src.read_text())
    if isinstance(config, dict):
        for key in ("torch_dtype", "dtype"):
            if key in config and dtype in CONFIG_DTYPES:
                config[key] = CONFIG_DTYPES[dtype]
    dst.write_text(json.dumps(config, indent=2) + "\n")


def _write_index(plan: BuildPlan, src: Path, dst: Path) -> None:
    """The index with the same weight map and the total size of the cast tensors."""
    index = json.loads(src.read_text())
    metadata = index.get("metadata")
    if isinstance(metadata, dict) and "total_size" in metadata:
        metadata["total_size"] = sum(plan.out_nbytes(t.info)
                                     for t in plan.checkpoint.tensors.values())
    dst.write_text(json.dumps(index, indent=2) + "\n")
