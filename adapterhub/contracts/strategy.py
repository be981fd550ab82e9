"""The merge-strategy contract: how several adapters' effects on one module combine.

A :class:`MergeStrategy` (registered by a plugin through ``adapterhub_register_merge_strategies``)
gets a :class:`ModuleMerge` job per module — every input's :class:`ModuleInput`, seen through its
method's merge kernel — and returns low-rank factors ``(L, R)`` in the base weight's layout
(``ΔW = L @ R``). :func:`truncated_svd` and :func:`refactor` are the factorisations strategies
share.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from adapterhub.errors import MergeError

if TYPE_CHECKING:
    import torch

    from adapterhub.contracts.config import MethodConfig
    from adapterhub.contracts.method import AdapterMethod


@dataclass
class ModuleInput:
    """What one input adapter does to one module, read lazily through its merge kernel."""

    index: int  # position among the merge's inputs
    weight: float
    method: AdapterMethod
    config: MethodConfig
    tensors: dict[str, torch.Tensor]
    module: str
    base_shape: tuple[int, ...]

    @cached_property
    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(L, R)`` with ``L @ R = ΔW`` (unweighted), or None for a method without them."""
        return self.method.low_rank(self.module, self.tensors, self.config, self.base_shape)

    @property
    def rank(self) -> int | None:
        return None if self.factors is None else self.factors[0].shape[1]

    def dense(self) -> torch.Tensor:
        """The unweighted fp32 ΔW in the base layout (computed on each call: not kept)."""
        return self.method.delta_weight(self.module, self.tensors, self.config,
                                        self.base_shape).float()


@dataclass
class ModuleMerge:
    """One module's merge job: the inputs that adapt it and the merge's parameters."""

    module: str
    base_shape: tuple[int, ...]
    inputs: list[ModuleInput]
    rank: int | None  # the requested output rank (None: the strategy's default)
    density: float | None
    params: dict[str, Any]
    seed: int | None
    strategy: str = ""

    def generator(self, index: int) -> torch.Generator:
        """A generator for input ``index`` seeded by (seed, module, index): the same draws
        whatever order modules are merged in, independent draws per module and input."""
        import torch

        key = f"{self.seed}/{self.module}/{index}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2 ** 63 - 1)
        return torch.Generator().manual_seed(seed)

    def stack(self) -> torch.Tensor:
        """The unweighted dense ΔW of every input, stacked on dim 0 (``[n, d0, d1]``)."""
        import torch

        return torch.stack([item.dense() for item in self.inputs])

    def weight_vector(self) -> torch.Tensor:
        import torch

        return torch.tensor([item.weight for item in self.inputs], dtype=torch.float32)

    def weighted_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact factors of ``Σ w_i ΔW_i``: the inputs' factors side by side (rank Σ r_i)."""
        import torch

        missing = [item.method.name for item in self.inputs if item.factors is None]
        if missing:
            raise MergeError(f"{self.strategy}: the {missing[0]!r} adapter on {self.module} "
                             f"has no low-rank form to concatenate",
                             hint="Use a strategy that works on dense deltas (svd, linear)")
        left = torch.cat([item.factors[0] * item.weight for item in self.inputs], dim=1)
        right = torch.cat([item.factors[1] for item in self.inputs], dim=0)
        return left, right

    def input_ranks(self) -> list[int]:
        return [item.rank for item in self.inputs if item.rank is not None]

    def out_rank(self, default: int | None) -> int:
        """The requested rank, else ``default`` (from the inputs' ranks), capped by the shape."""
        rank = self.rank if self.rank is not None else default
        if rank is None:
            raise MergeError(f"{self.strategy}: no input adapter of {self.module} has a rank "
                             f"to default to", hint="Pass the output rank (--rank)")
        return max(1, min(rank, *self.base_shape))


class MergeStrategy:
    """How several adapters' effects on one module combine into one low-rank delta.

    Subclasses set ``name`` and ``description``, declare which common parameters they read
    (``uses_density``, ``uses_rank``, ``uses_seed``) and their own parameters with defaults
    (``defaults``), and implement :meth:`merge_module`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True when the result is exactly Σ w_i·ΔW_i (up to float rounding) at the default rank
    exact: ClassVar[bool] = False
    uses_density: ClassVar[bool] = False
    uses_rank: ClassVar[bool] = True
    uses_seed: ClassVar[bool] = False
    #: strategy-specific parameters and their defaults; values must be JSON scalars
    defaults: ClassVar[dict[str, Any]] = {}
    #: allowed values of string parameters
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def merge_module(self, job: ModuleMerge) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, R)``: fp32 factors of the merged ΔW in the base layout, ``L @ R ≈ ΔW``."""
        raise NotImplementedError

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with defaults filled in; raise :class:`MergeError` for unknown ones."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise MergeError(f"strategy {self.name!r} has no parameter {unknown[0]!r} "
                             f"(parameters: {known})")
        out = {**self.defaults, **params}
        for key, allowed in self.choices.items():
            if out[key] not in allowed:
                raise MergeError(f"{self.name}: {key} must be one of {', '.join(allowed)}; "
                                 f"got {out[key]!r}")
        return out

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"name": cls.name, "description": cls.description, "exact": cls.exact,
                "density": cls.uses_density, "rank": cls.uses_rank, "seed": cls.uses_seed,
                "params": dict(cls.defaults)}


# -- factorisation helpers for strategies --------------------------------------------------


def truncated_svd(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors ``(L, R)`` of a dense fp32 matrix (Eckart–Young)."""
    import torch

    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    return _split(u, s, vh, rank)


def refactor(left: torch.Tensor, right: torch.Tensor, rank: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``truncated_svd(left @ right, rank)`` without forming the product: QR of each factor,
    then the SVD of a small ``k × k`` core."""
    import torch

    q_left, r_left = torch.linalg.qr(left.float())
    q_right, r_right = torch.linalg.qr(right.float().T)
    u, s, vh = torch.linalg.svd(r_left @ r_right.T, full_matrices=False)
    return _split(q_left @ u, s, vh @ q_right.T, rank)


def _split(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``rank`` singular triplets, fix each one's sign (the largest entry of its left
    vector is positive) so results are reproducible, and share √s between the two sides."""
    import torch

    k = min(rank, s.shape[0])
    u, s, vh = u[:, :k], s[:k], vh[:k]
    sign = torch.sign(u[u.abs().argmax(dim=0), torch.arange(k)])
    sign[sign == 0] = 1
    root = s.clamp_min(0).sqrt() * sign  # sign² = 1: the product is unchanged
    return (u * root).contiguous(), (vh * root[:, None]).contiguous()
