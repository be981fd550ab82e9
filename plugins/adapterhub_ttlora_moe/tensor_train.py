"""Tensor-train kernels: factorisation, core shapes, init, contraction and reconstruction.

Index order (that of lanl/TTLoRAMoE, so its checkpoints map core for core): ``d_in = m_1⋯m_p``,
``d_out = n_1⋯n_q``, ``tt_shape = [m_1, …, m_p, n_q, …, n_1]``, ranks ``[1, r, …, r, 1]`` and

    ΔW[o, i] = G_1[:, i_1, :] ⋯ G_p[:, i_p, :] · G_{p+1}[:, o_q, :] ⋯ G_{p+q}[:, o_1, :]

with ``i = i_1 + m_1·(i_2 + m_2·(…))`` and ``o = o_1 + n_1·(o_2 + …)``: the first factor is the
fastest-moving index. Cores are ``[r_{k-1}, s_k, r_k]``; the *input cores* are ``G_1..G_p``
and the *output cores* ``G_{p+1}..G_{p+q}``.

Every function also takes cores with leading batch dimensions (``[*batch, r, s, r']``): the MoE
layer mixes expert cores per sample and contracts them in one batched call.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

INITS = ("direct", "zero")


# -- shapes -----------------------------------------------------------------------------------


def prime_factors(d: int) -> list[int]:
    """The prime factors of ``d`` with multiplicity, largest first."""
    out, p = [], 2
    while p * p <= d:
        while d % p == 0:
            out.append(p)
            d //= p
        p += 1
    if d > 1:
        out.append(d)
    return sorted(out, reverse=True)


def balanced_factors(d: int, max_factor: int) -> list[int]:
    """The fewest factors of ``d`` no larger than ``max_factor``, as equal as possible.

    Primes are dealt largest first to the smallest bucket; if a bucket ends above
    ``max_factor`` one more bucket is tried. A prime larger than ``max_factor`` is a factor of
    its own. The result is sorted largest first, which puts the large modes at the ends of the
    train (rank-1 boundary cores, ``r·s`` parameters) and the small ones in the middle
    (``r²·s``), the layout lanl/TTLoRAMoE's hand-picked shapes use.
    """
    primes = prime_factors(d)
    oversize = [p for p in primes if p > max_factor]
    small = [p for p in primes if p <= max_factor]
    rest = math.prod(small)
    k = 1
    while max_factor ** k < rest and k < len(small):
        k += 1
    while True:
        buckets = [1] * k
        for p in small:
            buckets[buckets.index(min(buckets))] *= p
        if max(buckets) <= max_factor or k >= len(small):
            break
        k += 1
    factors = [f for f in buckets if f > 1] + oversize
    return sorted(factors, reverse=True) or [1]


def tt_shape(m_factors: Sequence[int], n_factors: Sequence[int]) -> list[int]:
    """``m_factors + reversed(n_factors)``: the mode size of each core in train order."""
    return [*m_factors, *reversed(n_factors)]


def core_shapes(m_factors: Sequence[int], n_factors: Sequence[int], rank: int
                ) -> list[tuple[int, int, int]]:
    """``[r_{k-1}, s_k, r_k]`` of every core, ranks ``[1, r, …, r, 1]``."""
    modes = tt_shape(m_factors, n_factors)
    ranks = [1] + [rank] * (len(modes) - 1) + [1]
    return [(ranks[k], s, ranks[k + 1]) for k, s in enumerate(modes)]


def init_cores_(cores: Sequence[torch.Tensor], init: str) -> None:
    """lanl/TTLoRAMoE's ``direct_init``: kaiming-uniform (a=√8), then unit Frobenius norm.

    ``init="zero"`` also zeroes the last core, so ΔW = 0 at step 0 while every other core keeps
    its random start (the last core receives gradient first, like LoRA's B).
    """
    with torch.no_grad():
        for core in cores:
            nn.init.kaiming_uniform_(core, a=math.sqrt(8))
            core.div_(torch.linalg.vector_norm(core) + 1e-6)
        if init == "zero":
            cores[-1].zero_()


# -- the training kernel ----------------------------------------------------------------------


def input_factor(in_cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract the input cores into ``L [*batch, d_in, r]`` (row ``i`` in the TT index order)."""
    left = in_cores[0][..., 0, :, :]  # [*, m_1, r]
    for core in in_cores[1:]:
        # the new mode becomes the slower index: rows are ordered [m_k, …, m_1]
        left = torch.einsum("...xa,...anb->...nxb", left, core)
        left = left.reshape(*left.shape[:-3], -1, left.shape[-1])
    return left


def output_factor(out_cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract the output cores into ``R [*batch, r, d_out]`` (column ``o`` in TT order)."""
    right = out_cores[0]  # [*, r, n_q, r']
    for core in out_cores[1:]:
        # the new mode becomes the faster index: columns are ordered [n_q, …, n_j]
        right = torch.einsum("...ayb,...bnc->...aync", right, core)
        right = right.reshape(*right.shape[:-4], right.shape[-4], -1, right.shape[-1])
    return right[..., 0]


def contract(x: torch.Tensor, in_cores: Sequence[torch.Tensor],
             out_cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``ΔW x`` without building ΔW: ``(x · L) · R`` through the rank-r cut of the train.

    A train with ranks ``[1, r, …, r, 1]`` has rank ``r`` between its last input core and its
    first output core, so ``ΔW = (L R)ᵀ`` with ``L = G_1⋯G_p`` (``d_in × r``) and
    ``R = G_{p+1}⋯G_{p+q}`` (``r × d_out``). Building L and R costs ``O(r²·(d_in + d_out))``
    once per call, then two skinny matmuls, ``2r·(d_in + d_out)`` FLOPs per token — the cost of
    a rank-r LoRA. ``x`` may have any leading shape. With batched cores (``[B, r, s, r']``) the
    first dimension of ``x`` is the batch and each sample uses its own cores.
    """
    left, right = input_factor(in_cores), output_factor(out_cores)
    d_in = left.shape[-2]
    if left.ndim == 2:
        # Layouts chosen for the backward pass: with L stored [r, d_in] and R [r, d_out] (both
        # row-major), autograd computes their gradients as the wide products gradᵀ·x and hᵀ·grad;
        # the narrow xᵀ·grad (a [d_in, r] result) is 2-4x slower on CPU for small r.
        out = F.linear(x.reshape(-1, d_in), left.mT.contiguous()) @ right.contiguous()
    else:
        out = torch.matmul(torch.matmul(x.reshape(left.shape[0], -1, d_in), left), right)
    return out.reshape(*x.shape[:-1], right.shape[-1])


def sequential_contract(x: torch.Tensor, in_cores: Sequence[torch.Tensor],
                        out_cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """lanl/TTLoRAMoE's ``tensorized_multiplication``: one core at a time through the input.

    Kept as the index-order oracle (tests check :func:`contract` against it) and as the
    alternative the benchmark times. Unbatched cores only; ``x`` may have any leading shape.
    """
    lead = x.shape[:-1]
    m_factors = [core.shape[1] for core in in_cores]
    state = x.reshape(-1, *reversed(m_factors)).unsqueeze(1)  # [N, 1, m_p, …, m_1]
    for core in in_cores:  # contracts the fastest remaining input index
        state = torch.einsum("br...m,rmp->bp...", state, core)
    for core in out_cores:  # appends n_q first, n_1 last (the fastest output index)
        state = torch.einsum("br...,rnp->bp...n", state, core)
    return state.reshape(*lead, -1)


# -- the merge kernel -------------------------------------------------------------------------


def dense_delta(in_cores: Sequence[torch.Tensor], out_cores: Sequence[torch.Tensor]
                ) -> torch.Tensor:
    """The full ``ΔW [d_out, d_in]`` (without α), by contracting the whole train.

    Deliberately a different path from :func:`contract`: the train is contracted into the full
    tensor ``T[i_1, …, i_p, o_q, …, o_1]``, whose axes are then put in row-major order of
    ``(o, i)`` — output modes as they are (``o_1`` last, fastest), input modes reversed.
    """
    cores = [*in_cores, *out_cores]
    full = cores[0][0]  # [m_1, r]
    for core in cores[1:]:
        full = torch.tensordot(full, core, dims=1)
    full = full[..., 0]
    p = len(in_cores)
    order = [*range(p, full.ndim), *range(p - 1, -1, -1)]
    d_in = math.prod(core.shape[1] for core in in_cores)
    d_out = math.prod(core.shape[1] for core in out_cores)
    return full.permute(order).reshape(d_out, d_in)
