"""A test-only method that stores its dense ΔW as is: a method without a low-rank form."""

from __future__ import annotations

import pytest

from adapterhub import AdapterMethod, MethodConfig, hookimpl


class DenseDelta(AdapterMethod):
    name = "dense_delta_test"
    Config = MethodConfig

    def infer_base_shape(self, module, tensors, config):
        return tuple(tensors["delta"].shape)

    def delta_weight(self, module, tensors, config, base_shape):
        return tensors["delta"].float()


class DensePlugin:
    @staticmethod
    @hookimpl
    def adapterhub_register_methods(register):
        register(DenseDelta)


@pytest.fixture
def dense_method():
    """Registers ``dense_delta_test`` in the process-wide plugin manager for one test."""
    from adapterhub.contracts.plugins import plugin_manager

    pm = plugin_manager()
    pm.add_plugin(DensePlugin, "dense_delta_test")
    yield DenseDelta.name
    pm.remove_plugin("dense_delta_test")
