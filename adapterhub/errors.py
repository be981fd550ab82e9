"""The one exception hierarchy of adapterhub.

The root and the store's errors live in :mod:`registry_db.errors` (which imports nothing of
adapterhub) and are re-exported here; this module adds the errors of plugins, formats and
engines. Every class has a stable ``code`` and an HTTP ``status``: the hub sends the code,
and the client turns it back into the same class (:func:`error_class`).

Library and plugin code raise these and never touch ``click`` or ``sys.exit``. The CLI turns
each into a single line: what went wrong, then what to do next (``hint``). Classes also inherit
from the closest builtin so callers can catch ``KeyError``/``ValueError``/``LookupError`` as usual.
"""

from __future__ import annotations

from typing import Any

from registry_db.errors import (AdapterHubError, AdapterNotFoundError, AuthenticationError,
                                ConflictError, FormatError, IntegrityError, InvalidRequestError,
                                LimitExceededError, ManifestError, MissingBlobsError,
                                MissingParentsError, ObjectStoreError, PermissionDeniedError,
                                RangeNotSatisfiableError, RefError, RegistryError, error_class)

__all__ = [
    "AdapterHubError", "AdapterNotFoundError", "AuthenticationError", "ConfigError",
    "ConflictError", "EntryNotFoundError", "ExportError", "FormatError",
    "IncompatibleBaseModelError", "IntegrityError", "InternalError", "InvalidModelCardError",
    "InvalidRequestError",
    "LimitExceededError",
    "ManifestError", "MergeError", "NoRecipeError", "MethodNotAllowedError", "MissingBlobsError",
    "MissingParentsError", "ObjectStoreError",
    "OutputExistsError", "PermissionDeniedError", "PluginLoadError", "PreconditionFailedError",
    "PromotionError", "QuantizationError", "RangeNotSatisfiableError", "RefError",
    "RegistrationError", "RegistryError", "RepoNotFoundError", "RequestTimeoutError",
    "RevisionNotFoundError",
    "TargetError", "UnknownMethodError", "UnknownPluginError", "UnknownQuantizerError",
    "UnknownRemoteError", "UnknownStrategyError", "UnsafeFormatError", "WriteError",
    "error_class",
]


# --- plugins -------------------------------------------------------------------------------


class PluginLoadError(AdapterHubError):
    """A plugin's entry point failed to import or to register.

    Carries ``plugin`` (the entry-point name) and ``dist`` (its distribution, if known).
    """

    code = "PluginLoadFailed"
    status = 500

    def __init__(self, message: str, *, plugin: str, dist: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.plugin = plugin
        self.dist = dist

    def wire_fields(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "dist": self.dist}

    @classmethod
    def from_wire(cls, message: str, hint: str | None, body: dict[str, Any]
                  ) -> PluginLoadError:
        return cls(message, plugin=str(body.get("plugin")), dist=body.get("dist"), hint=hint)


class RegistrationError(AdapterHubError, ValueError):
    """A plugin registered something invalid (a bad name, a duplicate, a wrong type)."""

    code = "InvalidRegistration"
    status = 500


class UnknownPluginError(AdapterHubError, KeyError):
    """No installed plugin registered something by that name; the subclass says what."""

    code = "UnknownPlugin"
    status = 422
    default_hint = "Run 'adapterhub plugins' to see what is installed"

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return self.message


class UnknownMethodError(UnknownPluginError):
    """No installed method by that name (or for that PEFT adapter type)."""

    code = "UnknownMethod"


class UnknownQuantizerError(UnknownPluginError):
    """No installed quantizer by that name."""

    code = "UnknownQuantizer"


class UnknownStrategyError(UnknownPluginError):
    """No installed merge strategy by that name."""

    code = "UnknownStrategy"


class UnknownRemoteError(UnknownPluginError):
    """No installed remote kind handles that URL scheme."""

    code = "UnknownRemote"


# --- configuration and inputs --------------------------------------------------------------


class ConfigError(AdapterHubError, ValueError):
    """A method or quantizer config has an invalid or unknown field."""

    code = "InvalidConfig"
    status = 422
    default_hint = "Run 'adapterhub methods' to see each method's config fields"


class TargetError(AdapterHubError, ValueError):
    """``target_modules`` matched nothing, or matched a layer the method cannot adapt."""

    code = "InvalidTarget"
    status = 422
    default_hint = "Pass target_modules naming Linear layers of the model"


class UnsafeFormatError(FormatError):
    """The input is a pickle-based file (``.bin``/``.pt``/``.pkl``); adapterhub never unpickles."""

    code = "UnsafeFormat"
    default_hint = ("Convert it to safetensors with the tool that wrote it "
                    "(for PEFT: save_pretrained(..., safe_serialization=True))")


class ExportError(AdapterHubError, ValueError):
    """An adapter cannot be expressed in the requested format."""

    code = "NotExportable"
    status = 422


# --- compatibility and engines -------------------------------------------------------------


class IncompatibleBaseModelError(AdapterHubError, ValueError):
    """The adapter does not fit the base model (missing modules or wrong shapes)."""

    code = "IncompatibleBase"
    status = 422
    default_hint = "Check that the adapter was trained on this base model"


class MergeError(AdapterHubError, ValueError):
    """Folding a delta into a weight failed (non-finite values, incompatible adapters)."""

    code = "MergeFailed"
    status = 422


class NoRecipeError(MergeError):
    """``rebuild`` was asked for a version that no merge made (it has no recipe)."""

    code = "NoRecipe"


class PromotionError(AdapterHubError):
    """``promote`` refused: the version's metrics do not meet the condition."""

    code = "PromotionRefused"
    status = 409


class OutputExistsError(AdapterHubError, FileExistsError):
    """The output directory of a build, pull or export exists and is not empty."""

    code = "OutputExists"
    status = 409
    default_hint = "Choose a new --out directory, or pass --force to replace it"


class WriteError(AdapterHubError, OSError):
    """Writing output failed (disk full, no permission); nothing is left half-written."""

    code = "WriteFailed"
    status = 500
    default_hint = "Free disk space or fix the permissions of the output's directory, then retry"


class QuantizationError(AdapterHubError, ValueError):
    """A weight cannot be quantized as asked, or a quantized weight's stored state is invalid."""

    code = "QuantizationFailed"
    status = 422
    default_hint = ("Check the weight's dtype and the quantizer config, or re-quantize the "
                    "checkpoint with 'adapterhub quantize'")


# --- the Hugging Face protocol (codes huggingface_hub reads from X-Error-Code) -----------------


class RepoNotFoundError(AdapterNotFoundError):
    """No repository of that name (or the caller may not read it)."""

    code = "RepoNotFound"


class RevisionNotFoundError(AdapterNotFoundError):
    """The repository has no such branch, tag, version or commit."""

    code = "RevisionNotFound"


class EntryNotFoundError(AdapterNotFoundError):
    """The revision has no such file."""

    code = "EntryNotFound"


class PreconditionFailedError(ConflictError):
    """A commit's ``parentCommit`` is no longer the head of the branch."""

    code = "PreconditionFailed"
    status = 412


class InvalidModelCardError(InvalidRequestError):
    """A model card's YAML metadata is not what the Hub accepts (see
    :mod:`adapterhub.hub.model_card`)."""

    code = "InvalidModelCard"
    status = 400
    default_hint = "Fix the metadata block at the top of README.md"


class MethodNotAllowedError(InvalidRequestError):
    """The route exists but not for this HTTP method."""

    code = "MethodNotAllowed"
    status = 405


class RequestTimeoutError(InvalidRequestError):
    """The client sent its request too slowly (headers or body); the hub stopped waiting."""

    code = "RequestTimeout"
    status = 408


class InternalError(AdapterHubError):
    """The hub failed in a way it did not foresee (its log has the traceback)."""

    code = "InternalError"
    status = 500
    default_hint = "See the hub's log"
