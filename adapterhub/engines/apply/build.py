"""Writing a deployment build: shards in parallel, untouched tensors copied byte for byte,
folded tensors streamed a block of rows at a time, all into a hidden directory renamed into
place at the end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.contracts.plugins import get_quantizer
from adapterhub.engines.apply.files import copy_other_files
from adapterhub.engines.apply.plan import (BUILD_FORMAT, BUILD_RECORD, DTYPES, WHOLE_TENSOR_BUDGET,
                                           WHOLE_TENSOR_BYTES_PER_ELEMENT, BuildPlan, plan_build)
from adapterhub.errors import AdapterHubError, MergeError, WriteError
from adapterhub.io.checkpoint import fingerprint_of
from adapterhub.io.outdir import refuse_non_empty
from adapterhub.io.safetensors import DTYPE_SIZES, Header, TensorInfo, encode_header
from adapterhub.io.tensor_stream import (MemoryBudget, Streamer, Term, copy_range, pwrite_all,
                                         rows_cols)

if TYPE_CHECKING:
    import torch

    from adapterhub.engines.quantization import RequantizationReport
    from adapterhub.io.package import AdapterPackage

def apply_adapters(base: str | os.PathLike[str],
                   adapters: Sequence[str | os.PathLike[str] | AdapterPackage],
                   out: str | os.PathLike[str], *, weights: Sequence[float] | None = None,
                   dtype: str | None = None, requantize: bool = False,
                   untouched: str = "original", show_progress: bool = True) -> dict[str, Any]:
    """Build ``out``: the base checkpoint with ``Σ weight_i · ΔW_i`` folded in; returns the record.

    ``out`` must not exist or be an empty directory. See the module docstring for how tensors
    are written and :func:`plan_build` for the arguments.
    """
    out = Path(out)
    refuse_non_empty(out)
    plan = plan_build(base, adapters, weights=weights, dtype=dtype, requantize=requantize,
                      untouched=untouched)
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


@dataclass(frozen=True)
class Prepared:
    """A tensor computed before the shards are laid out (a re-quantized weight's parts),
    parked in the build's scratch file."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class _Build:
    """State shared by a build's jobs."""

    def __init__(self, plan: BuildPlan, tmp: Path) -> None:
        self.plan = plan
        self.streamer = Streamer()
        self.budget = MemoryBudget(WHOLE_TENSOR_BUDGET)
        self.counts = {"merged": 0, "copied": 0, "cast": 0}
        self.prepared: dict[str, Prepared] = {}
        self.reports: dict[str, RequantizationReport] = {}
        self._lock = threading.Lock()
        self._scratch_end = 0
        # unlinked at once: the scratch file never appears in the output
        path = tmp / ".scratch"
        self.scratch_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(path)

    def park(self, name: str, tensor: torch.Tensor) -> None:
        """Keep ``tensor`` in the scratch file for :func:`_write_tensor` to copy."""
        from adapterhub.io.safetensors import dtype_name, tensor_bytes

        data = tensor_bytes(tensor)
        with self._lock:
            offset, self._scratch_end = self._scratch_end, self._scratch_end + len(data)
        pwrite_all(self.scratch_fd, data, offset)
        self.prepared[name] = Prepared(dtype_name(tensor.dtype), tuple(tensor.shape), offset,
                                       len(data))

    def output(self, info: TensorInfo) -> tuple[str, tuple[int, ...]] | None:
        """The dtype and shape ``info``'s tensor is written with; ``None``: left out."""
        plan = self.plan
        if info.name in self.prepared:
            prepared = self.prepared[info.name]
            return prepared.dtype, prepared.shape
        if info.name in plan.quantized or info.name in plan.state_tensors:
            if plan.requantize:  # kept as stored (``dtype`` casts full-precision tensors only)
                return info.dtype, info.shape
            quantized = plan.quantized.get(info.name)
            return None if quantized is None else (plan.dtype, quantized.shape)
        return plan.out_dtype(info), info.shape

    def kind(self, info: TensorInfo) -> str:
        """How ``info``'s tensor is written: ``merged`` (ΔW added), ``copied`` (its bytes as
        they are) or ``cast`` (rewritten without ΔW: cast, dequantized or round-tripped)."""
        plan = self.plan
        if info.name in plan.folds:
            return "merged"
        if info.name in plan.roundtrip or (info.name in plan.quantized and not plan.requantize):
            return "cast"
        return "copied" if self.output(info) == (info.dtype, info.shape) else "cast"

    def close(self) -> None:
        os.close(self.scratch_fd)


def _build(plan: BuildPlan, tmp: Path, show_progress: bool) -> dict[str, Any]:
    from adapterhub import __version__
    from adapterhub.contracts.progress import progress

    checkpoint = plan.checkpoint
    build = _Build(plan, tmp)
    out_entries = []
    try:
        with ThreadPoolExecutor(_workers(), thread_name_prefix="adapterhub-apply") as pool, \
                progress(total=len(checkpoint.tensors) - len(plan.state_tensors), desc="apply",
                         unit="tensor", disable=not show_progress) as bar:
            if plan.requantize:  # first, so that every shard's layout is known
                jobs = [(_requantize, (build, name)) for name in plan.folds
                        if name in plan.quantized]
                _run(pool, jobs, bar)
                build.counts["merged"] += len(jobs)
            for header in checkpoint.headers:
                _write_shard(build, pool, header, tmp / header.path.name, bar)
                for info in header.tensors.values():
                    if (output := build.output(info)) is not None:
                        out_entries.append((info.name, *output))
    finally:
        build.close()
    skipped = copy_other_files(plan, tmp, {name: dtype for name, dtype, _ in out_entries},
                                sum(_nbytes(dtype, shape) for _, dtype, shape in out_entries))
    record = {
        "format": BUILD_FORMAT,
        "tool": {"name": "adapterhub", "version": __version__},
        "base": {"name": checkpoint.name, "fingerprint": checkpoint.fingerprint,
                 "files": [f.name for f in checkpoint.files],
                 "tensors": len(checkpoint.tensors)},
        "adapters": [_adapter_record(plan, index) for index in range(len(plan.packages))],
        "dtype": next((k for k, v in DTYPES.items() if v == plan.dtype), None),
        "tensors": build.counts,
        "quantization": _quantization_record(build),
        "fingerprint": fingerprint_of(out_entries),
        "skipped_files": skipped,
    }
    (tmp / BUILD_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    rows, cols = rows_cols(shape)
    return rows * cols * DTYPE_SIZES[dtype]


def _adapter_record(plan: BuildPlan, index: int) -> dict[str, Any]:
    package = plan.packages[index]
    folded_into = Counter(plan.base_kind(tensor) for tensor, folds in plan.folds.items()
                          for fold in folds if fold.adapter == index)
    return {"digest": package.digest, "method": package.manifest.method_name,
            "weight": plan.weights[index],
            "modules": len(package.manifest.base_model.get("modules", {})),
            "fingerprint_match": plan.fingerprint_match[index],
            "quantization": package.manifest.quantization,
            "folded_into": dict(sorted(folded_into.items()))}


def _quantization_record(build: _Build) -> dict[str, Any] | None:
    """The build record's ``quantization`` section: how the base stores its weights, what
    became of them, and for a re-quantizing build the measured rounding error."""
    plan = build.plan
    if not plan.quantized and not plan.roundtrip:
        return None
    base = {json.dumps(q.quantization, sort_keys=True): q.quantization
            for q in plan.quantized.values()}
    weights = Counter("roundtrip" if name in plan.roundtrip else
                      "dequantized" if not plan.requantize else
                      "requantized" if name in plan.folds else "kept"
                      for name in [*plan.quantized, *plan.roundtrip])
    section: dict[str, Any] = {
        "base": [base[key] for key in sorted(base)],
        "output": "quantized" if plan.requantize else "full_precision",
        "weights": dict(sorted(weights.items())),
    }
    if not plan.quantized:
        section["untouched"] = plan.untouched
    if plan.requantize:
        reports = [build.reports[name] for name in sorted(build.reports)]
        total = sum(reports[1:], reports[0]) if reports else None
        section["requantization"] = {
            "total": total.to_dict() if total else None,
            "tensors": {name: build.reports[name].to_dict() for name in sorted(build.reports)}}
    return section


def _workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _run(pool: ThreadPoolExecutor, jobs: list[tuple[Any, tuple]], bar: Any) -> None:
    """Run ``(function, args)`` jobs on the pool, ticking ``bar`` for each; the first failure
    cancels the rest and is raised once every running job has stopped."""
    futures = [pool.submit(function, *args) for function, args in jobs]
    try:
        for future in as_completed(futures):
            future.result()
            bar.update(1)
    finally:
        for future in futures:
            future.cancel()
        wait(futures)


def _requantize(build: _Build, name: str) -> None:
    """Fold the ΔW of a quantized weight and quantize it again; park its new tensors."""
    from adapterhub.engines.quantization import requantize_merged
    from adapterhub.io.checkpoint import read_quantized

    plan = build.plan
    info = plan.quantized[name]
    with build.budget.reserve(_whole_tensor_bytes(info.shape)):
        quantized = read_quantized(plan.checkpoint, info.stored)
        base = get_quantizer(info.stored.quantizer).dequantize(quantized) \
            if _needs_base(plan, name) else None
        terms = _terms(plan, name, info.shape, base)

        def add_delta(block: torch.Tensor, r0: int, r1: int) -> None:
            for term in terms:
                term.add_to(block, r0, r1)

        requantized, report = requantize_merged(quantized, add_delta, what=name)
        tensors = get_quantizer(info.stored.quantizer).state_dict(requantized, name)
        if set(tensors) != set(info.stored.tensors):
            raise MergeError(f"re-quantizing {name} gave the tensors {sorted(tensors)}; the "
                             f"base stores {sorted(info.stored.tensors)}")
        for key, tensor in tensors.items():
            stored_dtype = plan.checkpoint.tensors[key].info.dtype
            build.park(key, tensor)
            if build.prepared[key].dtype != stored_dtype:
                raise MergeError(f"{key} is stored as {stored_dtype}; re-quantizing gives "
                                 f"{build.prepared[key].dtype}",
                                 hint="Build without --requantize (a full-precision output)")
    build.reports[name] = report


def _whole_tensor_bytes(shape: tuple[int, ...]) -> int:
    rows, cols = rows_cols(shape)
    return rows * cols * WHOLE_TENSOR_BYTES_PER_ELEMENT


def _write_shard(build: _Build, pool: ThreadPoolExecutor, header: Header, dst: Path,
                 bar: Any) -> None:
    """Write one shard as independent jobs at known offsets: the header and any bytes between
    tensors, then every tensor (copied raw, cast, dequantized or merged)."""
    ordered = sorted(header.tensors.values(), key=lambda t: t.start)
    rewrite = any(build.output(info) != (info.dtype, info.shape) for info in ordered)
    src_fd = os.open(header.path, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    futures: list[Future] = []
    try:
        if rewrite:
            head, offsets = _new_layout(build, header, ordered)
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
        tensors, parts = [], []
        for info in ordered:
            if info.name not in offsets:
                continue  # a quantized weight's state tensor, dropped with its quantization
            job = pool.submit(_write_tensor, build, src_fd, dst_fd, info, offsets[info.name])
            if info.name in build.plan.state_tensors or info.name in build.prepared:
                parts.append(job)  # counted with its weight
            else:
                build.counts[build.kind(info)] += 1
                tensors.append(job)
        futures += tensors + parts
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


def _write_tensor(build: _Build, src_fd: int, dst_fd: int, info: TensorInfo,
                  offset: int) -> None:
    from adapterhub.engines.quantization import roundtrip_quantized
    from adapterhub.io.checkpoint import read_quantized

    plan, name = build.plan, info.name
    if name in build.prepared:
        prepared = build.prepared[name]
        copy_range(build.scratch_fd, dst_fd, prepared.offset, offset, prepared.nbytes)
        return
    dtype, shape = build.output(info)
    if name not in plan.folds and (dtype, shape) == (info.dtype, info.shape) \
            and name not in plan.roundtrip:
        copy_range(src_fd, dst_fd, info.start, offset, info.nbytes)
        return
    if name in plan.quantized:
        with build.budget.reserve(_whole_tensor_bytes(shape)):
            stored = plan.quantized[name].stored
            weight = get_quantizer(stored.quantizer).dequantize(
                read_quantized(plan.checkpoint, stored))
            terms = _terms(plan, name, shape, weight)
            build.streamer.stream_tensor(weight, dst_fd, offset, dtype, terms, name)
    elif name in plan.roundtrip:
        with build.budget.reserve(_whole_tensor_bytes(shape)):
            weight = roundtrip_quantized(plan.checkpoint.read_tensor(name), plan.roundtrip[name])
            terms = _terms(plan, name, shape, weight)
            build.streamer.stream_tensor(weight, dst_fd, offset, dtype, terms, name)
    elif _needs_base(plan, name):  # a fold that rescales W + ΔW reads the whole weight
        with build.budget.reserve(_whole_tensor_bytes(shape)):
            weight = plan.checkpoint.read_tensor(name)
            terms = _terms(plan, name, shape, weight)
            build.streamer.stream_tensor(weight, dst_fd, offset, dtype, terms, name)
    else:
        build.streamer.stream(src_fd, dst_fd, info, offset, dtype, _terms(plan, name, shape))


def _new_layout(build: _Build, header: Header, ordered: list[TensorInfo]
                ) -> tuple[bytes, dict[str, int]]:
    """The header for the rewritten tensors (same key order, same data order, dropped ones
    left out) and where each tensor's bytes go in the new file."""
    outputs = {info.name: build.output(info) for info in ordered}
    offsets, offset = {}, 0
    for info in ordered:
        if outputs[info.name] is not None:
            size = _nbytes(*outputs[info.name])
            offsets[info.name] = [offset, offset + size]
            offset += size
    entries: dict[str, Any] = {}
    for name in header.tensors:
        if name in offsets:
            dtype, shape = outputs[name]
            entries[name] = {"dtype": dtype, "shape": list(shape),
                             "data_offsets": offsets[name]}
    head = encode_header(entries, header.metadata)
    return head, {name: len(head) + begin for name, (begin, _) in offsets.items()}


def _needs_base(plan: BuildPlan, name: str) -> bool:
    """Whether a fold into ``name`` depends on the base weight (``base_dependence``)."""
    return any(plan.methods[fold.adapter][0].base_dependence
               for fold in plan.folds.get(name, ()))


def _terms(plan: BuildPlan, name: str, shape: tuple[int, ...],
           base: torch.Tensor | None = None) -> list[Term]:
    """Each fold's ΔW from its method's merge kernel: the exact low-rank factors when the
    method has them (``low_rank``), else the dense ``delta_weight``, both in fp32.

    A method whose change depends on the base weight gets ``merge(base) − base`` computed
    from ``base`` (the weight the adapters fold into: read whole, dequantized or round-tripped),
    so several adapters on one tensor each add the change they make to the same base.
    """
    import torch

    rows, cols = rows_cols(shape)
    terms = []
    for fold in plan.folds.get(name, ()):
        method, config = plan.methods[fold.adapter]
        group = plan.groups[fold.adapter][fold.module]
        weight = plan.weights[fold.adapter]
        if method.base_dependence:
            if base is None:
                raise MergeError(f"{method.name} on {fold.module} needs the base weight "
                                 f"{name} to fold into")
            wide = base.float() if base.dtype != torch.float64 else base
            merged = method.merge(wide, fold.module, group, config).to(wide.dtype)
            terms.append(Term(weight, dense=(merged - wide).reshape(rows, cols)))
            continue
        factors = method.low_rank(fold.module, group, config, shape)
        if factors is not None:
            left, right = (f.float().contiguous() for f in factors)
            if left.shape[0] != rows or right.shape[-1] != cols \
                    or left.shape[1] != right.shape[0]:
                raise MergeError(f"{method.name} factors {tuple(left.shape)} and "
                                 f"{tuple(right.shape)} of {fold.module} do not fit "
                                 f"{name} {list(shape)}")
            terms.append(Term(weight, left=left, right=right))
        else:
            dense = method.delta_weight(fold.module, group, config, shape).float()
            if tuple(dense.shape) != shape:
                raise MergeError(f"{method.name} delta of {fold.module} has shape "
                                 f"{tuple(dense.shape)}; {name} is {list(shape)}")
            terms.append(Term(weight, dense=dense.reshape(rows, cols)))
    return terms
