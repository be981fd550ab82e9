"""Testing helpers for adapterhub and its plugins: the method conformance suite.

Installed as a pytest plugin (entry point ``pytest11``), so the ``tiny_mlp`` fixture is
available in any test run; import :class:`MethodConformance` to run the suite on a method.
"""

from adapterhub.testing.conformance import MethodConformance, TinyMLP

__all__ = ["MethodConformance", "TinyMLP"]
