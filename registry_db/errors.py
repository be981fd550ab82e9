"""Errors of the store. ``registry_db`` imports nothing of adapterhub, so it has its own small
hierarchy; :mod:`adapterhub.registry` turns each into the matching
:mod:`adapterhub.errors` class (same message and hint)."""

from __future__ import annotations


class RegistryDBError(Exception):
    """Base class: ``message`` says what went wrong, ``hint`` what to do next."""

    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        return self.message


class InvalidNameError(RegistryDBError, ValueError):
    """A repository name, ref, tag, label or remote name is malformed."""


class NotFoundError(RegistryDBError, LookupError):
    """A repository, version, tag, blob or remote does not exist."""


class ConflictError(RegistryDBError):
    """The request contradicts what is stored (an ambiguous digest prefix, a duplicate remote)."""


class CorruptionError(RegistryDBError):
    """Stored or received bytes do not match their digest."""

    default_hint = "Run 'adapterhub verify' and restore the blob from a good copy (pull it again)"


class MissingBlobsError(RegistryDBError):
    """A manifest names blobs the registry does not hold; ``digests`` lists them."""

    def __init__(self, message: str, *, digests: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.digests = digests


class MissingParentsError(RegistryDBError):
    """A manifest's ``parents`` name versions the registry does not hold."""

    default_hint = "Push or pull the parent versions first"


class SchemaError(RegistryDBError):
    """The database cannot be opened or migrated (unreachable, or written by a newer version)."""
