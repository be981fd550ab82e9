"""Metric conditions for eval-gated promotion: ``'eval.accuracy>=0.9'``."""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

from adapterhub.errors import ConfigError, PromotionError

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt}
_CONDITION_RE = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(>=|<=|==|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)


def parse_condition(text: str) -> Condition:
    """Parse ``METRIC OP NUMBER`` with OP one of ``>= > <= < ==``."""
    match = _CONDITION_RE.match(text)
    threshold = None
    if match:
        try:
            threshold = float(match.group(3))
        except ValueError:
            pass
    if threshold is None or not math.isfinite(threshold):
        raise ConfigError(f"invalid condition {text!r}: write METRIC>=NUMBER (operators "
                          f"{', '.join(OPERATORS)})", hint="For example --if 'eval.accuracy>=0.9'")
    return Condition(match.group(1), match.group(2), threshold)


def metric_value(metrics: dict[str, Any], name: str) -> float:
    """``metrics[name]``, or the nested value at the dotted path ``name``."""
    value: Any = metrics.get(name)
    if value is None and "." in name:
        value = metrics
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        known = ", ".join(sorted(_flatten(metrics))) or "none"
        state = "is missing" if value is None else f"is {value!r}, not a number"
        raise PromotionError(f"metric {name!r} {state} (metrics: {known})",
                             hint="Record it in the adapter's metrics when you build it")
    return float(value)


def _flatten(metrics: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out
