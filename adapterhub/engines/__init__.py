"""Engines: what is done to adapters and models — attach and extract, train, merge, apply to
a base checkpoint, quantize. They take packages and paths; resolving refs is the registry
layer's work."""
