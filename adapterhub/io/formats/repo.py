"""An adapter version as the files of a Hugging Face model repository, and back.

What ``adapterhub serve`` shows Hugging Face clients, and what the ``hf://`` remote uploads:

- methods PEFT can express: ``adapter_config.json`` + ``adapter_model.safetensors`` (the PEFT
  layout, so ``PeftModel.from_pretrained``, transformers and vLLM load it as it is);
- other methods: ``adapter.safetensors`` (the native layout);
- always ``adapter.json``, the canonical manifest, so a version read back from the files has
  the same digest, lineage, metrics and labels it had.

Rendering is deterministic: the same version gives the same bytes on every machine and every
request (a hub's replicas agree on ETags without sharing a cache).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from adapterhub.errors import ExportError, UnknownMethodError
from adapterhub.io.formats.peft import CONFIG_FILE, WEIGHTS_FILE, layout_files, peft_layout
from adapterhub.io.package import MANIFEST_FILE, TENSORS_FILE, AdapterPackage
from adapterhub.io.safetensors import raw_parts, safetensors_bytes, write_bytes_atomic

if TYPE_CHECKING:
    from registry_db import Manifest

#: every file a version's repository may hold; anything else is not part of an adapter
ADAPTER_FILES = (MANIFEST_FILE, TENSORS_FILE, CONFIG_FILE, WEIGHTS_FILE)


def native_files(manifest: Manifest, blobs: Mapping[str, bytes]) -> dict[str, bytes]:
    """The native layout straight from blob bytes (no torch): ``adapter.json`` and
    ``adapter.safetensors``."""
    tensors = {name: (entry.dtype, entry.shape, blobs[entry.digest])
               for name, entry in manifest.tensors.items()}
    return {MANIFEST_FILE: manifest.canonical(),
            TENSORS_FILE: safetensors_bytes(tensors, {"format": "pt",
                                                      "adapterhub_version": manifest.digest})}


def peft_expressible(manifest: Manifest) -> bool:
    """Whether the version's method is installed and says PEFT can express it."""
    from adapterhub.contracts.plugins import get_method

    try:
        return get_method(manifest.method_name).peft_type is not None
    except UnknownMethodError:
        return False


def repo_files(package: AdapterPackage) -> dict[str, bytes]:
    """The files of ``package`` as a model repository (see the module docstring)."""
    if peft_expressible(package.manifest):
        try:
            files = layout_files(*peft_layout(package))
        except ExportError:
            pass  # this configuration of the method has no PEFT equivalent
        else:
            return {MANIFEST_FILE: package.manifest.canonical(), **files}
    blobs = {e.digest: raw_parts(package.tensors[name])[2]
             for name, e in package.manifest.tensors.items()}
    return native_files(package.manifest, blobs)


def package_from_files(files: Mapping[str, bytes]) -> AdapterPackage:
    """:func:`~adapterhub.io.formats.read_adapter` on files held in memory (only the adapter
    files are used)."""
    with tempfile.TemporaryDirectory(prefix="adapterhub-repo-") as tmp:
        for name in ADAPTER_FILES:
            if name in files:
                write_bytes_atomic(Path(tmp) / name, files[name])
        from adapterhub.io.formats import read_adapter

        return read_adapter(tmp)

