"""The versioned, content-addressed store of adapter versions. Imports no torch.

Open one with :class:`RegistryService` (any SQLAlchemy URL, or a path for a SQLite file);
every call carries a :class:`Caller` (:mod:`registry_db.access`). It returns the frozen
records of :mod:`registry_db.records` and raises the errors of :mod:`registry_db.errors`.

The names below load on first use, so that importing the errors or the records (what a
command that only talks to a hub needs) does not import SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "Caller": "access", "Scope": "access", "TokenInfo": "access", "parse_scope": "access",
    "AdapterHubError": "errors", "AdapterNotFoundError": "errors",
    "AuthenticationError": "errors", "ConflictError": "errors", "FormatError": "errors",
    "IntegrityError": "errors", "InvalidRequestError": "errors",
    "LimitExceededError": "errors", "ManifestError": "errors", "MissingBlobsError": "errors",
    "MissingParentsError": "errors", "PermissionDeniedError": "errors", "RefError": "errors",
    "RegistryError": "errors",
    "Manifest": "manifest", "TensorEntry": "manifest",
    "BlobInfo": "records", "BlobStream": "records", "CommitResult": "records",
    "EventInfo": "records", "GcReport": "records", "Problem": "records", "RemoteInfo": "records",
    "StoredBlob": "records", "UploadInfo": "records", "Usage": "records",
    "VerifyReport": "records",
    "VersionInfo": "records",
    "Ref": "refs", "parse_ref": "refs", "validate_name": "refs", "validate_tag": "refs",
    "RegistryService": "service",
}

if TYPE_CHECKING:
    from registry_db.access import Caller, Scope, TokenInfo, parse_scope
    from registry_db.errors import (AdapterHubError, AdapterNotFoundError, AuthenticationError,
                                    ConflictError, FormatError, IntegrityError,
                                    InvalidRequestError, LimitExceededError, ManifestError,
                                    MissingBlobsError, MissingParentsError,
                                    PermissionDeniedError, RefError, RegistryError)
    from registry_db.manifest import Manifest, TensorEntry
    from registry_db.records import (BlobInfo, BlobStream, CommitResult, EventInfo, GcReport,
                                     Problem, RemoteInfo, StoredBlob, UploadInfo, Usage,
                                     VerifyReport, VersionInfo)
    from registry_db.refs import Ref, parse_ref, validate_name, validate_tag
    from registry_db.service import RegistryService


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'registry_db' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"registry_db.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
