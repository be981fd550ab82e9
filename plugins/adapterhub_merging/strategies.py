"""The strategy classes: how each one turns a module's inputs into low-rank factors.

Every strategy except ``cat`` combines the inputs' dense ΔW (each with its own scaling,
counted once) by one of the functions in :mod:`adapterhub_merging.functions`, and stores the
result as its best rank-R approximation (truncated SVD). ``cat`` and, at their default ranks,
``linear`` are exact.
"""

from __future__ import annotations

from adapterhub.plugin_api import MergeStrategy, ModuleMerge, refactor, truncated_svd
from adapterhub_merging import functions


class Cat(MergeStrategy):
    name = "cat"
    description = ("exact Σ w·ΔW: the inputs' low-rank factors side by side (rank Σ r_i); "
                   "low-rank (LoRA) inputs only")
    exact = True
    uses_rank = False

    def merge_module(self, job: ModuleMerge):
        return job.weighted_factors()


class Linear(MergeStrategy):
    name = "linear"
    description = ("task arithmetic Σ w·ΔW, re-factored by SVD; lossless at the default "
                   "rank Σ r_i, the best rank-R approximation below it")
    exact = True

    def default_rank(self, job: ModuleMerge) -> int | None:
        ranks = job.input_ranks()
        return sum(ranks) if len(ranks) == len(job.inputs) else None

    def merge_module(self, job: ModuleMerge):
        rank = job.out_rank(self.default_rank(job))
        if all(item.factors is not None for item in job.inputs):
            return refactor(*job.weighted_factors(), rank)
        dense = functions.task_arithmetic(job.stack(), job.weight_vector())
        return truncated_svd(dense, rank)


class Svd(Linear):
    name = "svd"
    description = ("task arithmetic Σ w·ΔW truncated by SVD to rank R (default: the largest "
                   "input rank) — PEFT's 'svd'")
    exact = False

    def default_rank(self, job: ModuleMerge) -> int | None:
        return max(job.input_ranks(), default=None)


class _Dense(MergeStrategy):
    """Prune/elect on each module's stacked dense ΔW, then truncated SVD (default rank: the
    largest input rank)."""

    uses_density = True

    def combine(self, job: ModuleMerge):
        raise NotImplementedError

    def merge_module(self, job: ModuleMerge):
        rank = job.out_rank(max(job.input_ranks(), default=None))
        return truncated_svd(self.combine(job), rank)


class Ties(_Dense):
    name = "ties"
    description = "TIES: magnitude-prune each ΔW, elect signs, mean of agreeing entries"
    defaults = {"majority_sign_method": "total"}
    choices = {"majority_sign_method": functions.SIGN_METHODS}

    def combine(self, job: ModuleMerge):
        return functions.ties(job.stack(), job.weight_vector(), job.density,
                              job.params["majority_sign_method"])


class MagnitudePrune(_Dense):
    name = "magnitude_prune"
    description = "Σ w·ΔW after keeping each ΔW's largest-magnitude entries"

    def combine(self, job: ModuleMerge):
        return functions.magnitude_prune_merge(job.stack(), job.weight_vector(), job.density)


class DareLinear(_Dense):
    name = "dare_linear"
    description = "DARE: drop ΔW entries at random (seeded), rescale by 1/density, sum"
    uses_seed = True

    def combine(self, job: ModuleMerge):
        return functions.dare_linear(job.stack(), job.weight_vector(), job.density,
                                     [job.generator(item.index) for item in job.inputs])


class DareTies(_Dense):
    name = "dare_ties"
    description = "DARE's random drop and rescale, then TIES' sign election and mean"
    uses_seed = True
    defaults = {"majority_sign_method": "total"}
    choices = {"majority_sign_method": functions.SIGN_METHODS}

    def combine(self, job: ModuleMerge):
        return functions.dare_ties(job.stack(), job.weight_vector(), job.density,
                                   [job.generator(item.index) for item in job.inputs],
                                   job.params["majority_sign_method"])


STRATEGIES = (Linear, Cat, Svd, Ties, DareLinear, DareTies, MagnitudePrune)
