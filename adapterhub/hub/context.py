"""The state a hub process holds: its registry, auth mode, render cache and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from adapterhub.hub.observe import Metrics
    from adapterhub.hub.render import RenderCache
    from adapterhub.registry import Registry


@dataclass
class Hub:
    registry: Registry
    auth: str
    renders: RenderCache
    metrics: Metrics
    started: float = field(default=0.0)


def hub_of(request: Request) -> Hub:
    return request.app.state.hub
