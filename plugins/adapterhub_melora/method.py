"""MELoRA's method class: divisibility checks, the block-diagonal merge kernel, no PEFT export."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from adapterhub import AdapterMethod, ExportError, FormatError, TargetError
from adapterhub_melora.config import MeloraConfig

if TYPE_CHECKING:
    import torch

KEYS = ("melora_A", "melora_B")


class MeloraMethod(AdapterMethod):
    """Mini-ensemble LoRA (arXiv 2402.17263): ΔW = blockdiag(s·B_1A_1, …, s·B_nA_n).

    Native tensors per module: ``<path>.melora_A`` ``[n, r, d_in/n]`` and ``<path>.melora_B``
    ``[n, d_out/n, r]``. Trainable parameters ``r·(d_in + d_out)`` (a rank-r LoRA's count) for
    an equivalent rank of ``n·r``.
    """

    name = "melora"
    format_version = 1
    Config = MeloraConfig
    description = "MELoRA: n mini LoRAs on contiguous slices (block-diagonal ΔW, rank n·r)"
    layer_kinds = ("linear",)
    peft_type = None

    def identity_at_init(self, config):
        return config.init_lora_weights is not False

    def check_targets(self, targets, config):
        from adapterhub_melora.layer import linear_dims

        n = config.n
        for path, module in targets:
            d_out, d_in = linear_dims(module)
            if d_in % n or d_out % n:
                raise TargetError(
                    f"MELoRA with n={n} splits each adapted matrix into {n} equal blocks, but "
                    f"{path!r} has d_in={d_in}, d_out={d_out} (not both divisible by {n})",
                    hint=f"Choose n dividing both (here: {_common_divisors(d_in, d_out)}), or "
                         f"leave {path!r} out of target_modules")

    def make_layer(self, base, config, path):
        from adapterhub_melora.layer import MeloraLinear

        return MeloraLinear(base, self, config, path)

    # -- merge kernel -----------------------------------------------------------------------

    def infer_base_shape(self, module, tensors, config):
        a, b = _factors(module, tensors, config)
        return (b.shape[0] * b.shape[1], a.shape[0] * a.shape[2])

    def delta_weight(self, module, tensors, config, base_shape):
        import torch

        """The block-diagonal ΔW ``[d_out, d_in]``; off-diagonal blocks are exactly zero."""
        a, b = _factors(module, tensors, config)
        n, d_blk_out, d_blk_in = a.shape[0], b.shape[1], a.shape[2]
        if tuple(base_shape) != (n * d_blk_out, n * d_blk_in):
            raise FormatError(f"{module}: MELoRA factors make a {n * d_blk_out}x{n * d_blk_in} "
                              f"ΔW; the base weight is {tuple(base_shape)}")
        blocks = torch.bmm(b.float(), a.float()) * config.scaling  # [n, d_out/n, d_in/n]
        delta = blocks.new_zeros(n, d_blk_out, n, d_blk_in)
        diagonal = torch.arange(n)
        delta[diagonal, :, diagonal, :] = blocks
        return delta.reshape(n * d_blk_out, n * d_blk_in)

    def low_rank(self, module, tensors, config, base_shape):
        import torch

        """``(L, R)`` = ``(blockdiag(s·B_1, …, s·B_n), blockdiag(A_1, …, A_n))``: exactly the
        block-diagonal ΔW as a rank ``n·r`` product (off-diagonal blocks multiply zeros), so
        merges and LoRA-only exports (vLLM, TensorRT-LLM) express MELoRA without loss."""
        a, b = _factors(module, tensors, config)
        left = torch.block_diag(*(b.float() * config.scaling))
        right = torch.block_diag(*a.float())
        if (left.shape[0], right.shape[1]) != tuple(base_shape):
            raise FormatError(f"{module}: MELoRA factors make a {left.shape[0]}x"
                              f"{right.shape[1]} ΔW; the base weight is {tuple(base_shape)}")
        return left, right

    # -- formats ----------------------------------------------------------------------------

    def to_peft(self, package):
        raise ExportError(
            "PEFT cannot express a MELoRA adapter: its ΔW is block-diagonal (n mini LoRAs on "
            "contiguous slices) and no PEFT tuner computes that (BD-LoRA and GraLoRA are "
            "different structures)",
            hint="Keep the native format (adapterhub.load reads it), or fold it into the base "
                 "weights with 'adapterhub apply' (in Python: adapterhub.unload(model, "
                 "merge=True))")


def _factors(module: str, tensors: dict[str, torch.Tensor], config: MeloraConfig
             ) -> tuple[torch.Tensor, torch.Tensor]:
    if set(tensors) != set(KEYS):
        raise FormatError(f"{module}: a MELoRA module holds melora_A and melora_B; got "
                          f"{sorted(tensors)}")
    a, b = tensors["melora_A"], tensors["melora_B"]
    if (a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[1] != b.shape[2]
            or a.shape[0] != config.n or a.shape[1] != config.r):
        raise FormatError(f"{module}: melora_A {tuple(a.shape)} and melora_B {tuple(b.shape)} "
                          f"are not [n, r, d_in/n] and [n, d_out/n, r] with n={config.n}, "
                          f"r={config.r}")
    return a, b


def _common_divisors(a: int, b: int) -> str:
    g = math.gcd(a, b)
    divisors = [d for d in range(2, min(g, 64) + 1) if g % d == 0]
    return ", ".join(map(str, divisors[:8])) if divisors else "none but 1"
