"""The versioned, content-addressed store of adapter versions. Imports no torch.

Open one with :class:`RegistryService` (any SQLAlchemy URL, or a path for a SQLite file);
it returns the frozen records of :mod:`registry_db.records` and raises the errors of
:mod:`registry_db.errors`.
"""

from registry_db.errors import (ConflictError, CorruptionError, InvalidNameError,
                                MissingBlobsError, MissingParentsError, NotFoundError,
                                RegistryDBError, SchemaError)
from registry_db.manifest import Manifest, TensorEntry
from registry_db.records import (BlobInfo, CommitResult, EventInfo, GcReport, Problem,
                                 RemoteInfo, UploadInfo, Usage, VerifyReport, VersionInfo)
from registry_db.refs import Ref, parse_ref, validate_name, validate_tag
from registry_db.service import RegistryService

__all__ = [
    "BlobInfo", "CommitResult", "ConflictError", "CorruptionError", "EventInfo", "GcReport",
    "InvalidNameError", "Manifest", "MissingBlobsError", "MissingParentsError", "NotFoundError",
    "Problem", "Ref", "RegistryDBError", "RegistryService", "RemoteInfo", "SchemaError",
    "TensorEntry", "UploadInfo", "Usage", "VerifyReport", "VersionInfo", "parse_ref",
    "validate_name", "validate_tag",
]
