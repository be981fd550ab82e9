"""TensorRT-LLM's LoRA arrays: ``model.lora_weights.npy`` + ``model.lora_config.npy``.

What NVIDIA/TensorRT-LLM ``examples/hf_lora_convert.py::convert_hf_model`` writes from a PEFT
directory, which a request sends (with its ``lora_task_id``) to the C++ runtime:

* one row per (layer, module): ``flatten(in)`` ``[r, d_in]``, then ``flatten(s·out)``
  ``[d_out, r]`` with the scaling folded into the "out" half, then (DoRA) the magnitude vector
  ``[d_out]``; rows zero-padded to the longest; ``[1, rows, longest]``;
* a config row ``[module_id, layer_idx, rank, is_dora]`` per weight row (int32,
  ``[1, rows, 4]``), module ids from ``LoraManager.LORA_MODULE_IDS``;
* float16 unless asked otherwise; bfloat16 as numpy's raw 2-byte ``|V2`` (TRT-LLM's
  ``torch_to_numpy``), since numpy has no bfloat16.

Rows come in the converter's order (PEFT keys sorted, grouped by layer, then module).
When an adapter adapts some but not all of q/k/v, zero rows fill the missing ones in every
layer, as ``tensorrt_llm/lora_manager.py`` (``get_missing_qkv_modules``, ``load_from_hf``)
does. Nothing here names a method: a module is exported from its method's ``low_rank`` factors
or, for a DoRA-style method, from the :class:`MagnitudeLowRank` capability. docs/export.md lists
every rule and where it comes from.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from adapterhub.errors import ConfigError, ExportError
from adapterhub.io.formats.vllm import EMBEDDING_MODULES

if TYPE_CHECKING:
    import numpy as np
    import torch

    from adapterhub.contracts.config import MethodConfig
    from adapterhub.contracts.method import AdapterMethod
    from adapterhub.io.package import AdapterPackage

WEIGHTS_FILE = "model.lora_weights.npy"
CONFIG_FILE = "model.lora_config.npy"
DTYPES = ("float16", "bfloat16", "float32")

#: ``tensorrt_llm/lora_manager.py::LoraManager.LORA_MODULE_IDS``
LORA_MODULE_IDS = {
    "attn_qkv": 0, "attn_q": 1, "attn_k": 2, "attn_v": 3, "attn_dense": 4, "mlp_h_to_4h": 5,
    "mlp_4h_to_h": 6, "mlp_gate": 7, "cross_attn_qkv": 8, "cross_attn_q": 9,
    "cross_attn_k": 10, "cross_attn_v": 11, "cross_attn_dense": 12, "moe_h_to_4h": 13,
    "moe_4h_to_h": 14, "moe_gate": 15, "moe_router": 16, "mlp_router": 17, "mlp_gate_up": 18,
}
#: ``examples/hf_lora_convert.py::hf_modules_to_trtllm_modules`` (note gate_proj → h_to_4h and
#: up_proj → gate, the reverse of what the names suggest)
HF_TO_TRTLLM = {
    "q_proj": "attn_q", "v_proj": "attn_v", "k_proj": "attn_k", "qkv_proj": "attn_qkv",
    "query_key_value": "attn_qkv", "o_proj": "attn_dense", "dense": "attn_dense",
    "gate_proj": "mlp_h_to_4h", "down_proj": "mlp_4h_to_h", "up_proj": "mlp_gate",
    "gate_up_proj": "mlp_h_to_4h", "c_fc": "mlp_h_to_4h", "c_proj": "mlp_4h_to_h",
    "gate": "moe_router",
}  # (its w1/w2/w3 entries serve MoE experts, which are refused: the converter keeps one)
#: the converter's key pattern, on module paths: ``…layers.<N>.(self_attn|mlp).<name>``
MODULE_RE = re.compile(r"^(?:.*\.)?layers\.([0-9]+)\.(self_attn|mlp)\.([a-z_]+)$")
QKV = ("attn_q", "attn_k", "attn_v")
#: TRT-LLM's default ``--max_lora_rank``
DEFAULT_MAX_RANK = 64
APPLY_HINT = "Merge it into the base model with 'adapterhub apply' and serve the merged model"


@runtime_checkable
class MagnitudeLowRank(Protocol):
    """The capability of a DoRA-style method (weight-decomposed: a magnitude and a direction).

    ``magnitude_low_rank(module, tensors, config, base_shape)`` returns ``(L, R, m)`` in fp32,
    or ``None`` for a module without a magnitude, such that the adapted weight is
    ``m ⊙ (W + L R) / ‖W + L R‖`` with the norm taken over each output row (dim 1 of a
    ``[d_out, d_in]`` weight): ``L`` ``[d_out, r]`` with the scaling folded in, ``R``
    ``[r, d_in]``, ``m`` ``[d_out]`` (PEFT's ``lora_magnitude_vector``).
    """

    def magnitude_low_rank(self, module: str, tensors: dict[str, torch.Tensor],
                           config: MethodConfig, base_shape: tuple[int, ...]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None: ...


@dataclass
class TrtllmRow:
    """One row of the arrays: a module of one layer."""

    module: str | None  # the adapted module's path; None for a zero-filled q/k/v row
    trt_module: str  # a key of LORA_MODULE_IDS
    layer: int
    lora_in: torch.Tensor  # [r, d_in], fp32
    lora_out: torch.Tensor  # [d_out, r], fp32, scaling folded in
    magnitude: torch.Tensor | None = None  # [d_out], fp32 (DoRA)

    @property
    def rank(self) -> int:
        return int(self.lora_in.shape[0])

    @property
    def config_row(self) -> list[int]:
        return [LORA_MODULE_IDS[self.trt_module], self.layer, self.rank,
                int(self.magnitude is not None)]


@dataclass
class TrtllmPlan:
    """The rows of an adapter, and why some modules (or the whole method) cannot be rows."""

    rows: list[TrtllmRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)  # q/k/v modules filled with zeros
    hint: str = APPLY_HINT

    @property
    def dora(self) -> bool:
        return any(row.magnitude is not None for row in self.rows)

    @property
    def target_modules(self) -> list[str]:
        """What ``trtllm-build --lora_target_modules`` must list for these rows."""
        return sorted({row.trt_module for row in self.rows}, key=LORA_MODULE_IDS.__getitem__)


def plan_rows(package: AdapterPackage) -> TrtllmPlan:
    """The converter's rows for ``package`` (DoRA magnitudes as stored, not yet normalized),
    with every reason it cannot be exported collected in ``problems``."""
    import torch

    method, config = package.method, package.config
    plan = TrtllmPlan()
    if method.composite:
        plan.problems.append(f"the {method.name!r} method routes between experts at run time; "
                             f"TensorRT-LLM's LoRA rows hold one adapter per module")
        return plan
    shapes = package.manifest.base_model.get("modules", {})
    layers: dict[int, dict[str, TrtllmRow]] = {}
    for module, group in sorted(method.group_tensors(package.tensors).items()):
        kind = method.module_kind(module, group, config)
        try:
            factors = _row_factors(method, module, group, config, tuple(shapes[module]), kind)
        except ExportError as exc:
            plan.problems.append(exc.message)
            continue
        if factors is None:
            plan.problems.insert(0, f"TensorRT-LLM serves LoRA and DoRA only, and the "
                                    f"{method.name!r} method has no low-rank form "
                                    f"(in [r, d_in], out [d_out, r])")
            return plan
        name, match = module.rpartition(".")[2], MODULE_RE.match(module)
        if kind == "embedding" or name in EMBEDDING_MODULES:
            plan.problems.append(f"{module}: TensorRT-LLM does not apply LoRA to embeddings "
                                 f"or output heads")
        elif match is None or match.group(3) not in HF_TO_TRTLLM:
            plan.problems.append(f"{module}: TensorRT-LLM's converter maps only "
                                 f"'<prefix>.layers.<N>.(self_attn|mlp).<name>' modules with "
                                 f"<name> one of {', '.join(HF_TO_TRTLLM)}")
        else:
            layer, trt_module = int(match.group(1)), HF_TO_TRTLLM[match.group(3)]
            rows = layers.setdefault(layer, {})
            if trt_module in rows:
                plan.problems.append(f"{module}: layer {layer} already has a {trt_module} "
                                     f"module ({rows[trt_module].module})")
            else:
                rows[trt_module] = TrtllmRow(module, trt_module, layer, *factors)
                if match.group(3) == "gate_up_proj":  # the converter's preprocess_lora_weights
                    out = rows[trt_module].lora_out
                    half = out.shape[0] // 2
                    rows[trt_module].lora_out = torch.cat([out[half:], out[:half]])
    for rows in layers.values():
        plan.rows.extend(rows.values())
    _fill_qkv(plan)
    return plan


def _fill_qkv(plan: TrtllmPlan) -> None:
    """``LoraManager.load_from_hf``: q, k and v missing from the whole adapter get zero rows
    ``[r, hidden]`` and ``[hidden, r]`` after each layer's own rows (its ``r`` is the config's
    rank; here the largest q/k/v rank, the same for a uniform LoRA)."""
    import torch

    plan.filled = _missing_qkv({row.trt_module for row in plan.rows})
    if not plan.filled:
        return
    qkv = [row for row in plan.rows if row.trt_module in QKV]
    rank, hidden = max(row.rank for row in qkv), qkv[0].lora_in.shape[1]
    rows, plan.rows = plan.rows, []
    for i, row in enumerate(rows):
        plan.rows.append(row)
        if i + 1 == len(rows) or rows[i + 1].layer != row.layer:
            plan.rows.extend(TrtllmRow(None, trt_module, row.layer, torch.zeros(rank, hidden),
                                       torch.zeros(hidden, rank)) for trt_module in plan.filled)


def _row_factors(method: AdapterMethod, module: str, group: dict[str, torch.Tensor],
                 config: MethodConfig, shape: tuple[int, ...], kind: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """``(in [r, d_in], out [d_out, r], magnitude or None)`` in fp32, or None for a method
    with neither a low-rank form nor a magnitude-and-direction form."""
    magnitude = None
    decomposed = (method.magnitude_low_rank(module, group, config, shape)
                  if isinstance(method, MagnitudeLowRank) else None)
    if decomposed is not None:
        left, right, magnitude = decomposed
        if kind != "linear":
            raise ExportError(f"{module}: DoRA magnitudes are exported for Linear layers only "
                              f"(this one is {kind})")
        magnitude = magnitude.float().reshape(-1)
    else:
        factors = method.low_rank(module, group, config, shape)
        if factors is None:
            return None
        left, right = factors
    left, right = left.float(), right.float()
    # low_rank factors are in the base weight's layout: [d_out, r] @ [r, d_in] for a Linear,
    # [d_in, r] @ [r, d_out] for a Conv1D; TRT-LLM wants in [r, d_in] and out [d_out, r]
    lora_in, lora_out = (left.T, right.T) if kind == "conv1d" else (right, left)
    return lora_in.contiguous(), lora_out.contiguous(), magnitude


def _missing_qkv(present: set[str]) -> list[str]:
    """``LoraManager.get_missing_qkv_modules``: q, k and v are all adapted or none is."""
    return [m for m in QKV if m not in present] if present & set(QKV) else []


def normalize_magnitude(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                        magnitude: torch.Tensor) -> torch.Tensor:
    """``m / ‖W + L R‖`` (row norms): the magnitude TRT-LLM's DoRA kernel expects, as
    ``examples/dora/normalize_weights.py::normalize_dora_vector`` computes it."""
    import torch

    norm = torch.linalg.norm(weight + left @ right, dim=1).to(weight.dtype)
    return magnitude / norm


def normalize_rows(plan: TrtllmPlan, base: str | os.PathLike[str] | None) -> None:
    """Divide each DoRA row's magnitude by the row norms of its adapted base weight."""
    if not plan.dora:
        return
    if base is None:
        raise ExportError("this adapter has DoRA magnitudes; TensorRT-LLM expects each divided "
                          "by the row norms of the adapted base weight (W + ΔW)",
                          hint="Pass the base checkpoint with --base BASE")
    from adapterhub.io.checkpoint import Checkpoint

    checkpoint = Checkpoint(base)
    for row in plan.rows:
        if row.magnitude is None:
            continue
        name = checkpoint.module_weight(row.module)
        if name is None or name in checkpoint.quantized:
            raise ExportError(f"{checkpoint.path} has no full-precision weight for "
                              f"{row.module}", hint="Pass the base checkpoint the adapter was "
                                                    "trained on with --base")
        weight = checkpoint.read_tensor(name)
        if tuple(weight.shape) != (row.lora_out.shape[0], row.lora_in.shape[1]):
            raise ExportError(f"{name} in {checkpoint.path} is {tuple(weight.shape)}; the "
                              f"adapter's {row.module} needs "
                              f"{(row.lora_out.shape[0], row.lora_in.shape[1])}")
        row.magnitude = normalize_magnitude(weight, row.lora_out, row.lora_in, row.magnitude)


def pack_rows(rows: list[TrtllmRow], dtype: str = "float16") -> tuple[np.ndarray, np.ndarray]:
    """``(lora_weights [1, N, longest], lora_config [1, N, 4] int32)`` from rows: each part
    flattened and cast to ``dtype``, concatenated, zero-padded to the longest row."""
    import numpy as np
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if not rows:
        raise ExportError("the adapter has no modules to export")
    torch_dtype = getattr(torch, dtype)
    flat = []
    for row in rows:
        parts = [row.lora_in, row.lora_out] + ([row.magnitude] if row.magnitude is not None
                                               else [])
        values = torch.cat([p.contiguous().flatten().to(torch_dtype) for p in parts])
        if not torch.isfinite(values).all():
            raise ExportError(f"{row.module}: values overflow {dtype}",
                              hint="Export with --dtype bfloat16 or --dtype float32")
        flat.append(values)
    longest = max(values.numel() for values in flat)
    weights = torch.stack([torch.nn.functional.pad(v, (0, longest - v.numel())) for v in flat])
    config = np.asarray([row.config_row for row in rows], dtype=np.int32)[None]
    if torch_dtype == torch.bfloat16:  # TRT-LLM's torch_to_numpy: raw bits as a 2-byte void
        return weights.view(torch.int16).numpy().view(np.dtype("V2"))[None], config
    return weights.numpy()[None], config


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` output (what the converter writes), as bytes."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def trtllm_files(package: AdapterPackage, *, dtype: str = "float16",
                 base: str | os.PathLike[str] | None = None) -> dict[str, bytes]:
    """The two ``.npy`` files for ``package``; raises ExportError naming every module (or the
    method) TensorRT-LLM cannot take."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    plan = plan_rows(package)
    if plan.problems:
        more = f" (and {len(plan.problems) - 1} more)" if len(plan.problems) > 1 else ""
        raise ExportError(plan.problems[0] + more, hint=plan.hint)
    normalize_rows(plan, base)
    weights, config = pack_rows(plan.rows, dtype)
    return {WEIGHTS_FILE: npy_bytes(weights), CONFIG_FILE: npy_bytes(config)}


# -- check --target trtllm[:max_rank=N] ---------------------------------------------------------


def lint_package(package: AdapterPackage, problems: list[str], notes: list[str],
                 max_rank: int | None) -> None:
    """What ``export --format trtllm`` would refuse, and what the engine must be built with."""
    plan = plan_rows(package)
    problems.extend(plan.problems)
    if not plan.rows:
        return
    # zero-filled q/k/v rows take the largest q/k/v rank: a real module is over when they are
    _lint_ranks([(row.rank, row.module) for row in plan.rows if row.module], max_rank,
                problems, notes)
    if plan.filled:
        notes.append(f"{', '.join(plan.filled)} filled with zeros (q, k and v are adapted "
                     f"together)")
    notes.append(f"build with --lora_plugin and --lora_target_modules "
                 f"{' '.join(plan.target_modules)}")
    if plan.dora:
        notes.append("DoRA: export with --base BASE (magnitudes are normalized against the "
                     "base weights) and build with --dora_plugin enable")


def lint_peft_files(config: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                    problems: list[str], notes: list[str], max_rank: int | None) -> None:
    """What TRT-LLM's converter makes of a PEFT directory as it is on disk."""
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; TensorRT-LLM's converter "
                        f"reads LORA adapters only")
    if config.get("alpha_pattern"):
        problems.append("alpha_pattern is set; the converter scales every module by the one "
                        "lora_alpha (export with --format trtllm to fold the patterns)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r}; the converter drops trained biases")
    ranks, present = [], set()
    for key, shape in sorted(shapes.items()):
        path = key.removeprefix("base_model.model.")
        if key.endswith(".lora_A.weight"):
            module = path.removesuffix(".lora_A.weight")
            match = MODULE_RE.match(module)
            if match is None or match.group(3) not in HF_TO_TRTLLM:
                problems.append(f"{module}: TensorRT-LLM's converter does not map this module")
                continue
            present.add(HF_TO_TRTLLM[match.group(3)])
            ranks.append((min(shape) if shape else 0, module))
        elif not key.endswith((".lora_B.weight", ".lora_magnitude_vector")):
            problems.append(f"{path}: not a LoRA factor; the converter skips it")
    _lint_ranks(ranks, max_rank, problems, notes)
    missing = _missing_qkv(present)
    if missing:
        notes.append(f"no rows for {', '.join(missing)}: build with all of attn_q attn_k "
                     f"attn_v in --lora_target_modules")
    if config.get("use_dora"):
        notes.append("use_dora: the converter expects magnitudes already divided by the base "
                     "row norms (TRT-LLM's examples/dora/normalize_weights.py, or export with "
                     "--format trtllm --base BASE)")


def _lint_ranks(ranks: list[tuple[int, str]], max_rank: int | None, problems: list[str],
                notes: list[str]) -> None:
    if not ranks:
        return
    top = max(rank for rank, _ in ranks)
    if max_rank is not None:
        over = [(rank, module) for rank, module in ranks if rank > max_rank]
        if over:
            rank, module = max(over, key=lambda pair: pair[0])
            problems.append(f"{len(over)} module(s) have a rank above the engine's "
                            f"max_lora_rank={max_rank} (e.g. {module}, rank {rank})")
    elif top > DEFAULT_MAX_RANK:
        notes.append(f"rank {top} is above TensorRT-LLM's default --max_lora_rank "
                     f"{DEFAULT_MAX_RANK}: build with --max_lora_rank {top} or more")
