"""The pytest plugin adapterhub installs: fixtures for method authors.

Kept import-cheap (no torch at import) because pytest loads it in every run of the venv.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_mlp():
    """A fresh :class:`adapterhub.testing.TinyMLP` model (Linear layers ``lin0``, ``lin1``)."""
    from adapterhub.testing.conformance import TinyMLP

    return TinyMLP.build()


@pytest.fixture
def adapterhub_plugins():
    """A fresh plugin manager with the installed entry points loaded."""
    from adapterhub.contracts.plugins import get_plugin_manager

    return get_plugin_manager()
