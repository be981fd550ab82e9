"""The root of adapterhub's one exception hierarchy, and the errors of the store.

Every class carries a stable ``code`` and the HTTP ``status`` the hub answers it with. The
wire carries the code (``{"error", "hint", "code"}`` and ``X-Error-Code``); a client maps it
back to the same class with :func:`error_class`, so there is no hand-kept table of codes
anywhere. :mod:`adapterhub.errors` extends this hierarchy (plugins, formats, engines) and
re-exports these classes; ``registry_db`` itself imports nothing of adapterhub.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AdapterHubError(Exception):
    """Base class of every error adapterhub raises on purpose.

    Args:
        message: what went wrong, one sentence, naming the offending value.
        hint: the next step for the user, one sentence (optional).
        headers: HTTP headers the hub sends along when this error answers a request.
    """

    code: ClassVar[str] = "Error"
    status: ClassVar[int] = 400
    default_hint: ClassVar[str] = ""

    def __init__(self, message: str, *, hint: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and the hint as one line, as the CLI prints them."""
        text = self.message.rstrip(".")
        if self.hint:
            return f"{text}. {self.hint.rstrip('.')}."
        return f"{text}."

    def wire_fields(self) -> dict[str, Any]:
        """Fields the JSON error body carries besides ``error``, ``hint`` and ``code``."""
        return {}

    @classmethod
    def from_wire(cls, message: str, hint: str | None, body: dict[str, Any]
                  ) -> AdapterHubError:
        """Rebuild the error a hub sent (the inverse of :meth:`wire_fields`)."""
        return cls(message, hint=hint)


def error_class(code: str | None) -> type[AdapterHubError] | None:
    """The class whose ``code`` is ``code`` (among every loaded subclass), or None."""
    if not code:
        return None
    stack: list[type[AdapterHubError]] = [AdapterHubError]
    while stack:
        cls = stack.pop()
        if cls.__dict__.get("code") == code:
            return cls
        stack.extend(cls.__subclasses__())
    return None


# --- requests ------------------------------------------------------------------------------


class InvalidRequestError(AdapterHubError, ValueError):
    """A request is malformed: a bad field, size, id or body."""

    code = "BadRequest"


class LimitExceededError(InvalidRequestError):
    """A request or a manifest is larger than the hub accepts (bodies, tensors, shapes)."""

    code = "LimitExceeded"
    status = 413


class RangeNotSatisfiableError(InvalidRequestError):
    """A ``Range`` header asks for bytes outside the file."""

    code = "RangeNotSatisfiable"
    status = 416


class RefError(AdapterHubError, ValueError):
    """A repository name, ref, tag, label or remote name is malformed."""

    code = "InvalidName"
    default_hint = "Names look like namespace/name; refs add @N, :tag or @sha256:<hex>"


class FormatError(AdapterHubError, ValueError):
    """A file, directory or manifest is not in the expected format (corrupt, truncated, wrong
    layout)."""

    code = "InvalidFormat"
    status = 422


class ManifestError(FormatError):
    """A manifest is malformed (the message names the field)."""

    code = "InvalidManifest"


# --- lookups and conflicts -------------------------------------------------------------------


class AdapterNotFoundError(AdapterHubError, LookupError):
    """A path, repository, reference, version, tag, blob, upload or remote does not exist (or
    the caller may not know that it does)."""

    code = "NotFound"
    status = 404


class ConflictError(AdapterHubError):
    """The request contradicts what is stored (an ambiguous digest prefix, an existing tag or
    remote, an incomplete upload)."""

    code = "Conflict"
    status = 409


# --- integrity -------------------------------------------------------------------------------


class IntegrityError(AdapterHubError):
    """Bytes do not match their digest or their declared size, or a reference points at
    nothing."""

    code = "Corrupt"
    status = 422
    default_hint = "The data is corrupt; fetch or rebuild it from a good copy"


class MissingBlobsError(IntegrityError):
    """A manifest names blobs the registry does not hold (or that the caller may not use);
    ``digests`` lists them."""

    code = "MissingBlobs"
    status = 409
    default_hint = "Send the blobs first (adapterhub push does); then commit the manifest"

    def __init__(self, message: str, *, digests: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.digests = digests

    def wire_fields(self) -> dict[str, Any]:
        return {"missing": list(self.digests)}

    @classmethod
    def from_wire(cls, message: str, hint: str | None, body: dict[str, Any]
                  ) -> MissingBlobsError:
        missing = body.get("missing")
        return cls(message, hint=hint, digests=[d for d in missing if isinstance(d, str)]
                   if isinstance(missing, list) else [])


class MissingParentsError(IntegrityError):
    """A manifest's ``parents`` name versions the registry does not hold (or that the caller
    may not read)."""

    code = "MissingParents"
    status = 409
    default_hint = "Push or pull the parent versions first"


# --- the registry and its callers --------------------------------------------------------------


class RegistryError(AdapterHubError):
    """A registry cannot be opened, migrated or reached, or refuses a request."""

    code = "RegistryUnavailable"
    status = 503


class AuthenticationError(RegistryError):
    """No token, or an unknown, revoked or expired one (HTTP 401)."""

    code = "Unauthorized"
    status = 401
    default_hint = ("Set ADAPTERHUB_TOKEN or run 'adapterhub login URL' with a token from "
                    "'adapterhub token create' on the hub")


class PermissionDeniedError(RegistryError):
    """The caller is known but its scopes do not cover the request (HTTP 403)."""

    code = "Forbidden"
    status = 403
    default_hint = ("Ask the hub's admin for a token with the scope shown (adapterhub token "
                    "create --scope LEVEL:NAMESPACE)")


class ObjectStoreError(RegistryError):
    """The registry's object store (S3-compatible) cannot be reached or refused a request."""

    code = "ObjectStoreUnavailable"
    status = 502
    default_hint = ("Check AWS_ENDPOINT_URL, AWS_REGION and the credentials (AWS_ACCESS_KEY_ID "
                    "/ AWS_SECRET_ACCESS_KEY or an AWS profile) of this process")
