"""Contracts: the base classes plugins implement, the plugin manager, and small helpers every
layer may use. Nothing here imports a layer above it."""
