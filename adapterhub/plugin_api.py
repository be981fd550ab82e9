"""Everything a plugin may use, in one module (documented in ``docs/plugins.md``).

Plugins import ``adapterhub`` (the public API, ``hookimpl`` and the errors) and this module,
nothing else of adapterhub; ``lint-imports`` holds them to it. Importing it does not import
torch: names whose modules need torch load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub.contracts.config import ConfigBase, MethodConfig, QuantizerConfig
from adapterhub.contracts.lazy import lazy_exports
from adapterhub.contracts.method import AdapterMethod
from adapterhub.contracts.numerics import check_finite, fold_delta
from adapterhub.contracts.plugins import get_method, get_quantizer, get_strategy
from adapterhub.contracts.progress import human_size, progress
from adapterhub.contracts.quantizer import QuantizedTensor, Quantizer
from adapterhub.contracts.remote import BlobStream, Buffer, ProgressCallback, Remote
from adapterhub.contracts.strategy import (MergeStrategy, ModuleInput, ModuleMerge, refactor,
                                           truncated_svd)
from adapterhub.hookspecs import hookimpl

_LAZY = {
    # the layers a method puts in place, and finding them in a model (torch)
    "AdaptedLayer": "adapterhub.contracts.layers",
    "adapted_layers": "adapterhub.contracts.layers",
    "adapter_dtype": "adapterhub.contracts.layers",
    "find_targets": "adapterhub.contracts.layers",
    "layer_kind": "adapterhub.contracts.layers",
    "pattern_key": "adapterhub.contracts.layers",
    # adapters as data
    "AdapterPackage": "adapterhub.io.package",
    "read_adapter": "adapterhub.io.formats",
    "ADAPTER_FILES": "adapterhub.io.formats.repo",  # a version as a model repository's files
    "repo_files": "adapterhub.io.formats.repo",
    "tensor_bytes": "adapterhub.io.safetensors",
    "RawTensor": "adapterhub.io.safetensors",  # a tensor as stored, no torch (what hubs render)
    "raw_parts": "adapterhub.io.safetensors",
    # what remote plugins build on
    "DatabaseRemote": "adapterhub.registry.remotes",
    "HubClient": "adapterhub.registry.http_client",
    "TRANSPORT_ERRORS": "adapterhub.registry.http_client",  # a failed connection (retry)
    # the store's records and names, which remotes trade in
    "CommitResult": "registry_db",
    "Manifest": "registry_db",
    "StoredBlob": "registry_db",
    "VersionInfo": "registry_db",
    "parse_ref": "registry_db",
    "validate_name": "registry_db",
    "is_digest": "registry_db.digests",
}

if TYPE_CHECKING:
    from adapterhub.contracts.layers import (AdaptedLayer, adapted_layers, adapter_dtype,
                                             find_targets, layer_kind, pattern_key)
    from adapterhub.io.formats import read_adapter
    from adapterhub.io.formats.repo import ADAPTER_FILES, repo_files
    from adapterhub.io.package import AdapterPackage
    from adapterhub.io.safetensors import RawTensor, raw_parts, tensor_bytes
    from adapterhub.registry.http_client import TRANSPORT_ERRORS, HubClient
    from adapterhub.registry.remotes import DatabaseRemote
    from registry_db import (CommitResult, Manifest, StoredBlob, VersionInfo, parse_ref,
                             validate_name)
    from registry_db.digests import is_digest

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "ADAPTER_FILES", "AdaptedLayer", "AdapterMethod", "AdapterPackage", "BlobStream", "Buffer",
    "CommitResult", "ConfigBase", "DatabaseRemote", "Manifest", "StoredBlob", "VersionInfo",
    "is_digest",
    "parse_ref", "validate_name",
    "HubClient", "MergeStrategy", "MethodConfig", "ModuleInput", "ModuleMerge",
    "ProgressCallback", "QuantizedTensor", "Quantizer", "QuantizerConfig", "RawTensor",
    "Remote", "TRANSPORT_ERRORS", "raw_parts",
    "adapted_layers", "adapter_dtype", "check_finite", "find_targets", "fold_delta",
    "get_method", "get_quantizer", "get_strategy", "hookimpl", "human_size", "layer_kind",
    "lazy_exports", "pattern_key", "progress", "read_adapter", "refactor", "repo_files",
    "tensor_bytes", "truncated_svd",
]
