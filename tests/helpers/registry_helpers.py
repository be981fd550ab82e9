"""Building registry content without torch: raw tensor bytes, manifests, pushes."""

from __future__ import annotations

import hashlib
import random

from registry_db import Caller, Manifest, RegistryService, TensorEntry

#: the local user, as the Python API and the CLI call the store
LOCAL = Caller.local_user("tester")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tensor_bytes(seed: int, n: int = 4096) -> bytes:
    """Deterministic pseudo-random bytes (``n`` of them) for a fake BF16 tensor."""
    return random.Random(seed).randbytes(n)


def manifest_for(tensors: dict[str, bytes], *, labels: dict | None = None,
                 parents: tuple[str, ...] = (), metrics: dict | None = None) -> Manifest:
    return Manifest(
        method={"name": "lora", "version": 1, "config": {"r": 4}},
        base_model={"name": "tiny", "revision": None, "fingerprint": None, "modules": {}},
        tensors={name: TensorEntry(digest_of(data), "BF16", (len(data) // 2,))
                 for name, data in tensors.items()},
        labels=labels or {}, parents=parents, metrics=metrics or {})


def push_raw(service: RegistryService, name: str, tensors: dict[str, bytes], **kwargs):
    """What a push does: the missing blobs, then one commit."""
    manifest = manifest_for(tensors, **{k: kwargs.pop(k) for k in ("labels", "parents",
                                                                    "metrics") if k in kwargs})
    missing = service.blobs.missing([digest_of(d) for d in tensors.values()], caller=LOCAL)
    for data in tensors.values():
        if digest_of(data) in missing:
            service.blobs.write(digest_of(data), data, itemsize=2, caller=LOCAL)
    return service.commit(name, manifest, **kwargs, caller=LOCAL)
