"""Planning a deployment build: the adapters, the folds into each tensor, the dtype and
quantization policy, all checked against the base before anything is written."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from adapterhub.engines.compat import check_base
from adapterhub.errors import FormatError, IncompatibleBaseModelError, MergeError
from adapterhub.io.checkpoint import Checkpoint
from adapterhub.io.safetensors import PICKLE_SUFFIXES, TensorInfo

if TYPE_CHECKING:
    import torch

    from adapterhub.contracts.config import MethodConfig
    from adapterhub.contracts.method import AdapterMethod
    from adapterhub.io.checkpoint import QuantizedWeightInfo
    from adapterhub.io.package import AdapterPackage

BUILD_RECORD = "adapterhub-build.json"
BUILD_FORMAT = "adapterhub-build/1"
#: ``--dtype`` choices → safetensors dtype names
DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
#: the output dtype of a build that involves quantized weights, unless ``dtype`` says otherwise
QUANTIZED_DEFAULT_DTYPE = "bf16"
#: what ``untouched`` accepts: Linear weights no adapter changes stay as the base has them, or
#: become ``deq(Q(W))`` as in QLoRA training
UNTOUCHED = ("original", "roundtrip")
#: safetensors dtypes a merge may write into (and ``dtype`` casts)
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")
#: files that hold weights in some other layout: never copied, since they would be stale
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".msgpack", ".h5", ".onnx", ".npz",
                   *PICKLE_SUFFIXES)
#: transformers' names for dtypes in config.json
CONFIG_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
#: bytes whole-tensor jobs (dequantize, requantize, round trip) may hold at once; one larger
#: job runs alone
WHOLE_TENSOR_BUDGET = 1 << 30
#: bytes such a job holds per element of its weight, at most (see ``requantize_merged``)
WHOLE_TENSOR_BYTES_PER_ELEMENT = 8


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
    requantize: bool = False  # keep a quantized base quantized
    untouched: str = "original"
    #: full-precision tensors written as deq(Q(W)), with the quantization record to use
    roundtrip: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def quantized(self) -> dict[str, QuantizedWeightInfo]:
        """The base checkpoint's quantized weights."""
        return self.checkpoint.quantized

    @cached_property
    def state_tensors(self) -> frozenset[str]:
        """Tensors that belong to a quantized weight without being the weight itself."""
        return frozenset(name for info in self.quantized.values()
                         for name in info.stored.tensors if name != info.stored.weight)

    def base_kind(self, name: str) -> str:
        """What ΔW is added to in the tensor ``name`` (the build record's words)."""
        if name in self.quantized:
            return "requantized" if self.requantize else "dequantized"
        return "roundtrip" if name in self.roundtrip else "full_precision"

    def out_dtype(self, info: TensorInfo) -> str:
        return self.dtype if self.dtype and info.dtype in FLOAT_DTYPES else info.dtype


def plan_build(base: str | os.PathLike[str] | Checkpoint,
               adapters: Sequence[str | os.PathLike[str] | AdapterPackage], *,
               weights: Sequence[float] | None = None, dtype: str | None = None,
               requantize: bool = False, untouched: str = "original") -> BuildPlan:
    """Load the adapters and check each against the base; raise before anything is written.

    ``adapters`` are package objects or anything :func:`adapterhub.io.formats.read_adapter`
    reads. ``weights`` scale each adapter's ΔW (default 1.0 each); ``dtype`` is ``bf16``,
    ``fp16`` or ``fp32`` (default: every tensor keeps its dtype, except in a build with
    quantized weights, which defaults to bf16 unless ``requantize``).

    ``requantize`` keeps a quantized base quantized; ``untouched="roundtrip"`` (a
    full-precision base and an adapter trained on a quantized one) writes every Linear weight
    the quantizer would have quantized as ``deq(Q(W))``, not just the adapted ones.
    """
    from adapterhub.engines.merging import adapter_weights
    from adapterhub.io.formats import read_adapter
    from adapterhub.io.package import AdapterPackage

    checkpoint = base if isinstance(base, Checkpoint) else Checkpoint(base)
    if not checkpoint.path.is_dir():
        raise FormatError(f"the base model {checkpoint.path} is a file; apply builds from a "
                          f"checkpoint directory",
                          hint="Point at the directory holding config.json and the "
                               "safetensors files")
    if not adapters:
        raise MergeError("apply needs at least one adapter")
    if dtype is not None and dtype not in DTYPES:
        raise MergeError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if untouched not in UNTOUCHED:
        raise MergeError(f"unknown untouched {untouched!r}; choose one of "
                         f"{', '.join(UNTOUCHED)}")
    base_is_quantized = bool(checkpoint.quantized)
    if requantize and not base_is_quantized:
        raise MergeError(f"--requantize keeps a quantized base quantized, but "
                         f"{checkpoint.path} holds no quantized weights",
                         hint="Drop --requantize; an adapter trained on a quantized base is "
                              "folded into deq(Q(W)) rebuilt from these weights")
    if untouched != "original" and base_is_quantized:
        raise MergeError(f"--untouched {untouched} is for a full-precision base; the weights "
                         f"of {checkpoint.path} are quantized already")
    packages = [a if isinstance(a, AdapterPackage) else read_adapter(a) for a in adapters]
    weights = adapter_weights(weights, len(packages))
    plan = BuildPlan(checkpoint, packages, weights, None,
                     methods=[(p.method, p.config) for p in packages],
                     groups=[p.method.group_tensors(p.tensors) for p in packages],
                     requantize=requantize, untouched=untouched)
    for index, package in enumerate(packages):
        label = _label(plan, index)
        if package.method.composite:  # no single ΔW: a component must be picked first
            raise package.method.no_single_delta(package.config)
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
            if info.dtype not in FLOAT_DTYPES and tensor not in checkpoint.quantized:
                raise IncompatibleBaseModelError(
                    f"{label}: the base tensor {tensor} is {info.dtype}; apply folds deltas "
                    f"into floating-point weights only ({', '.join(FLOAT_DTYPES)})")
            plan.folds.setdefault(tensor, []).append(Fold(index, module))
    if not base_is_quantized:
        _plan_roundtrip(plan)
    if dtype is None and not requantize and (base_is_quantized or plan.roundtrip):
        dtype = QUANTIZED_DEFAULT_DTYPE
    plan.dtype = DTYPES[dtype] if dtype else None
    return plan


def _label(plan: BuildPlan, index: int) -> str:
    package = plan.packages[index]
    return f"adapter {index + 1} ({package.manifest.method_name}, {package.digest[:19]})"


def _plan_roundtrip(plan: BuildPlan) -> None:
    """On a full-precision base: which tensors become ``deq(Q(W))``, and with what quantization.

    A Linear weight an adapter trained on a quantized base folds into is rebuilt with that
    adapter's quantization; with ``untouched="roundtrip"`` so is every other one. Which
    weights are Linear weights: those ``adapterhub quantize`` quantizes (2-D ``.weight``
    tensors, not embeddings or output heads, which QLoRA keeps in full precision too).
    Adapters that disagree on a weight's base are refused.
    """
    from adapterhub.engines.quantization import quantization_label, same_quantization
    from adapterhub.engines.quantize_checkpoint import DEFAULT_SKIP, is_linear_weight

    trained = {i: p.manifest.quantization for i, p in enumerate(plan.packages)
               if p.manifest.quantization}
    for record in trained.values():  # an unknown quantizer or config fails here, not midway
        quantization_label(record)
    def quantizable(name: str) -> bool:
        info = plan.checkpoint.tensors[name].info
        return is_linear_weight(name, info.dtype, info.shape, DEFAULT_SKIP)

    for tensor, folds in plan.folds.items():
        if not quantizable(tensor):
            continue  # full precision during training as well
        records = [(fold.adapter, trained.get(fold.adapter)) for fold in folds]
        first, record = records[0]
        for other, other_record in records[1:]:
            if not same_quantization(record, other_record):
                raise MergeError(
                    f"{_label(plan, first)} and {_label(plan, other)} both change {tensor} "
                    f"but were trained on different bases ("
                    f"{_trained_on(record)} and {_trained_on(other_record)})",
                    hint="Build with adapters trained on the same base")
        if record:
            plan.roundtrip[tensor] = record
    if plan.untouched != "roundtrip":
        return
    records = list(trained.values())
    if not records:
        raise MergeError("--untouched roundtrip needs an adapter trained on a quantized base "
                         "(its manifest records the quantization); none of these was",
                         hint="Drop --untouched")
    if any(not same_quantization(records[0], r) for r in records[1:]):
        raise MergeError("--untouched roundtrip: the adapters were trained on differently "
                         "quantized bases (" + ", ".join(sorted({quantization_label(r)
                                                                 for r in records})) + ")")
    for name in plan.checkpoint.tensors:
        if name in plan.roundtrip or not quantizable(name):
            continue
        if name in plan.folds:
            raise MergeError(f"{_label(plan, plan.folds[name][0].adapter)} was trained on "
                             f"full-precision weights; with --untouched roundtrip, {name} "
                             f"would be deq(Q(W))")
        plan.roundtrip[name] = records[0]


def _trained_on(record: dict[str, Any] | None) -> str:
    from adapterhub.engines.quantization import quantization_label

    return "full-precision weights" if record is None else quantization_label(record)
