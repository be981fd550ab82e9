"""Deployment builds: fold adapters into a base checkpoint, streaming.

``apply_adapters(base, adapters, out)`` reads the base checkpoint's safetensors headers, checks
every adapter against them, then writes a new checkpoint with the same files, the same tensor
order and the same index:

- a tensor no adapter touches is copied as raw bytes (``copy_file_range``), never decoded;
- a targeted tensor gets ``Σ weight_i · ΔW_i`` from each adapter's merge kernel
  (:meth:`AdapterMethod.low_rank` factors, else :meth:`AdapterMethod.delta_weight`), added in
  fp32 and cast once, to its own dtype or to ``dtype``, a block of rows at a time
  (:mod:`adapterhub.io.tensor_stream`);
- with ``dtype``, the other floating tensors are cast too and the headers rewritten;
- a method whose change depends on the base weight (``base_dependence``: DoRA rescales
  ``W + ΔW``) is folded through its ``merge`` with the whole tensor in memory.

Quantized weights (QLoRA, DESIGN §7) take one of three paths; each adds ΔW to ``deq(Q(W))``,
the weight the adapter was trained against:

- a quantized base checkpoint is written as a plain one (``dtype``, default bf16): every
  quantized weight is dequantized, gets its ΔW if any, and loses its state tensors;
  ``config.json`` loses ``quantization_config``;
- with ``requantize`` it stays quantized: a merged weight is quantized again with its own
  quantizer and config (the rounding error measured per weight), an untouched one is copied
  byte for byte;
- an adapter trained on a quantized base folded into a full-precision base gets ``deq(Q(W))``
  rebuilt from ``W`` with the quantization its manifest records (with ``untouched=
  "roundtrip"``, so does every other Linear weight).

A quantized or rebuilt weight is held whole while it is processed (a :class:`MemoryBudget`
caps how many at once). Otherwise peak memory is the runtime, the adapters and a few MB of
buffers per thread, whatever the model's size. Everything goes to a hidden directory beside
``out`` that is renamed into place at the end, so an interrupted build leaves no ``out``; a
later build removes what a killed one left behind.
"""

from adapterhub.engines.apply.build import apply_adapters, remove_stale_builds
from adapterhub.engines.apply.plan import BUILD_RECORD, BuildPlan, Fold, plan_build

__all__ = ["BUILD_RECORD", "BuildPlan", "Fold", "apply_adapters", "plan_build",
           "remove_stale_builds"]
