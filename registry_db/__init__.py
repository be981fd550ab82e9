"""The versioned, content-addressed store of adapter versions. Imports no torch.

Open one with :class:`RegistryService` (any SQLAlchemy URL, or a path for a SQLite file);
every call carries a :class:`Caller` (:mod:`registry_db.access`). It returns the frozen
records of :mod:`registry_db.records` and raises the errors of :mod:`registry_db.errors`.
"""

from registry_db.access import Caller, Scope, TokenInfo, parse_scope
from registry_db.errors import (AdapterHubError, AdapterNotFoundError, AuthenticationError,
                                ConflictError, FormatError, IntegrityError, InvalidRequestError,
                                LimitExceededError, ManifestError, MissingBlobsError,
                                MissingParentsError, PermissionDeniedError, RefError,
                                RegistryError)
from registry_db.manifest import Manifest, TensorEntry
from registry_db.records import (BlobInfo, CommitResult, EventInfo, GcReport, Problem, RemoteInfo,
                                 UploadInfo, Usage, VerifyReport, VersionInfo)
from registry_db.refs import Ref, parse_ref, validate_name, validate_tag
from registry_db.service import RegistryService

__all__ = [
    "AdapterHubError", "AdapterNotFoundError", "AuthenticationError", "BlobInfo", "Caller",
    "CommitResult", "ConflictError", "EventInfo", "FormatError", "GcReport", "IntegrityError",
    "InvalidRequestError", "LimitExceededError", "Manifest", "ManifestError",
    "MissingBlobsError", "MissingParentsError", "PermissionDeniedError", "Problem", "Ref",
    "RefError", "RegistryError", "RegistryService", "RemoteInfo", "Scope", "TensorEntry",
    "TokenInfo", "UploadInfo", "Usage", "VerifyReport", "VersionInfo", "parse_ref",
    "parse_scope", "validate_name", "validate_tag",
]
