"""The Python API above the registry: what the CLI commands call, one function each, taking
refs as well as paths and packages. The model-level functions (``attach``, ``extract``, …)
live in :mod:`adapterhub.engines.adapters`; ``import adapterhub`` exposes both."""
