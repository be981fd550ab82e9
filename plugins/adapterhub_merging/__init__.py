"""Built-in merge strategies: linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune.

The math is PEFT's (``peft/utils/merge_utils.py``) applied to each module's dense ΔW, without
PEFT's known slips: each input's scaling counts once, and merged versions are stored with
``lora_alpha = r`` and no rsLoRA. See docs/merging.md.
"""

from adapterhub import hookimpl


@hookimpl
def adapterhub_register_merge_strategies(register):
    from adapterhub_merging.strategies import STRATEGIES

    for strategy in STRATEGIES:
        register(strategy)
