"""A test-only DoRA-style method: PEFT's DoRA tensors behind the generic magnitude capability.

adapterhub has no DoRA method on this branch (one is being written as a plugin); this stands in
for it so that ``export --format trtllm`` is exercised through the capability any DoRA plugin
implements (``magnitude_low_rank``, see :class:`adapterhub.formats.trtllm.MagnitudeLowRank`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from adapterhub import AdapterMethod, MethodConfig, hookimpl
from adapterhub.methods import fold_delta


@dataclass
class DoraTestConfig(MethodConfig):
    r: int = field(default=8, metadata={"help": "rank"})
    lora_alpha: float = field(default=8, metadata={"help": "scaling numerator"})
    use_rslora: bool = field(default=False, metadata={"help": "alpha / sqrt(r)"})


class DoraTest(AdapterMethod):
    """``W' = m ⊙ (W + s·B A) / ‖W + s·B A‖`` (row norms), PEFT's ``use_dora=True``."""

    name = "dora_test"
    Config = DoraTestConfig

    def infer_base_shape(self, module, tensors, config):
        return (tensors["lora_B"].shape[0], tensors["lora_A"].shape[1])

    def _parts(self, tensors, config):
        a, b = tensors["lora_A"].float(), tensors["lora_B"].float()
        r = a.shape[0]
        scaling = config.lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        return b * scaling, a, tensors["lora_magnitude_vector"].float()

    def magnitude_low_rank(self, module, tensors, config, base_shape):
        return self._parts(tensors, config)

    def merge(self, weight, module, tensors, config, *, scale=1.0):
        left, right, magnitude = self._parts(tensors, config)
        direction = weight.float() + left @ right
        adapted = magnitude[:, None] * direction / torch.linalg.norm(direction, dim=1)[:, None]
        return fold_delta(weight, adapted - weight.float(), scale=scale, what=module)


class DoraTestPlugin:
    @staticmethod
    @hookimpl
    def adapterhub_register_methods(register):
        register(DoraTest)


@pytest.fixture
def dora_method():
    """Registers ``dora_test`` in the process-wide plugin manager for one test."""
    from adapterhub.plugins import plugin_manager

    pm = plugin_manager()
    pm.add_plugin(DoraTestPlugin, "dora_test")
    yield DoraTest.name
    pm.unregister(name="dora_test")
    pm.infos.pop("dora_test")
    pm._registries = None
