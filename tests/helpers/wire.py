"""The hub's native wire format, spelled out for tests that talk raw HTTP to it."""

from __future__ import annotations

import hashlib
import json
import struct


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bundle(entries: list[tuple[str, bytes]]) -> bytes:
    """A ``POST /api/v1/blobs`` body: index length, JSON index, the blobs back to back."""
    index = json.dumps([{"digest": d, "size": len(b), "itemsize": 1} for d, b in entries])
    return struct.pack("<Q", len(index)) + index.encode() + b"".join(b for _, b in entries)


def manifest_with(tensors: dict[str, tuple[str, str, list[int]]], *, parents=(),
                  metrics=None, labels=None) -> dict:
    """A manifest as JSON: ``tensors`` maps names to ``(digest, dtype, shape)``."""
    return {"format": "adapterhub/1", "method": {"name": "lora", "version": 1, "config": {}},
            "quantization": None, "base_model": {"name": "tiny", "revision": None,
                                                 "fingerprint": None, "modules": {}},
            "tensors": {name: {"digest": d, "dtype": dtype, "shape": shape}
                        for name, (d, dtype, shape) in tensors.items()},
            "parents": list(parents), "recipe": None, "metrics": metrics or {},
            "labels": labels or {}}


def manifest_for(data: bytes, **kwargs) -> dict:
    """A manifest of one U8 tensor holding ``data``."""
    return manifest_with({"w": (digest(data), "U8", [len(data)])}, **kwargs)
