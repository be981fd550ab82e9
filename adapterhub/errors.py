"""The one exception hierarchy of adapterhub.

Library and plugin code raise these and never touch ``click`` or ``sys.exit``. The CLI turns
each into a single line: what went wrong, then what to do next (``hint``). Classes also inherit
from the closest builtin so callers can catch ``KeyError``/``ValueError``/``LookupError`` as usual.
"""

from __future__ import annotations


class AdapterHubError(Exception):
    """Base class of every error adapterhub raises on purpose.

    Args:
        message: what went wrong, one sentence, naming the offending value.
        hint: the next step for the user, one sentence (optional).
    """

    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and the hint as one line, as the CLI prints them."""
        text = self.message.rstrip(".")
        if self.hint:
            return f"{text}. {self.hint.rstrip('.')}."
        return f"{text}."


# --- plugins -------------------------------------------------------------------------------


class PluginLoadError(AdapterHubError):
    """A plugin's entry point failed to import or to register.

    Carries ``plugin`` (the entry-point name) and ``dist`` (its distribution, if known).
    """

    def __init__(self, message: str, *, plugin: str, dist: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.plugin = plugin
        self.dist = dist


class RegistrationError(AdapterHubError, ValueError):
    """A plugin registered something invalid (a bad name, a duplicate, a wrong type)."""


class UnknownMethodError(AdapterHubError, KeyError):
    """No plugin registered a method (or quantizer, strategy, remote) by that name."""

    default_hint = "Run 'adapterhub plugins' to see what is installed"

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return self.message


# --- configuration and inputs --------------------------------------------------------------


class ConfigError(AdapterHubError, ValueError):
    """A method or quantizer config has an invalid or unknown field."""

    default_hint = "Run 'adapterhub methods' to see each method's config fields"


class TargetError(AdapterHubError, ValueError):
    """``target_modules`` matched nothing, or matched a layer the method cannot adapt."""

    default_hint = "Pass target_modules naming Linear layers of the model"


class FormatError(AdapterHubError, ValueError):
    """A file or directory is not in the expected format (corrupt, truncated, wrong layout)."""


class UnsafeFormatError(FormatError):
    """The input is a pickle-based file (``.bin``/``.pt``/``.pkl``); adapterhub never unpickles."""

    default_hint = ("Convert it to safetensors with the tool that wrote it "
                    "(for PEFT: save_pretrained(..., safe_serialization=True))")


class ExportError(AdapterHubError, ValueError):
    """An adapter cannot be expressed in the requested format."""


# --- integrity and compatibility -----------------------------------------------------------


class IntegrityError(AdapterHubError):
    """Stored bytes do not match their digest, or a reference points at nothing."""

    default_hint = "The data is corrupt; fetch or rebuild it from a good copy"


class IncompatibleBaseModelError(AdapterHubError, ValueError):
    """The adapter does not fit the base model (missing modules or wrong shapes)."""

    default_hint = "Check that the adapter was trained on this base model"


class MergeError(AdapterHubError, ValueError):
    """Folding a delta into a weight failed (non-finite values, incompatible adapters)."""


class AdapterNotFoundError(AdapterHubError, LookupError):
    """A path, reference or version does not exist."""


# --- registry ------------------------------------------------------------------------------


class RefError(AdapterHubError, ValueError):
    """A repository name, ref, tag, label or remote name is malformed."""

    default_hint = "Names look like namespace/name; refs add @N, :tag or @sha256:<hex>"


class RegistryError(AdapterHubError):
    """A registry cannot be opened, migrated or reached, or refuses a request."""


class MissingBlobsError(IntegrityError):
    """A manifest names blobs the registry does not hold. ``digests`` lists them."""

    default_hint = "Send the blobs first (adapterhub push does); then commit the manifest"

    def __init__(self, message: str, *, digests: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.digests = digests


class PromotionError(AdapterHubError):
    """``promote`` refused: the version's metrics do not meet the condition."""


class OutputExistsError(AdapterHubError, FileExistsError):
    """The output directory of a build or export already exists and is not empty."""

    default_hint = "Choose a new --out directory, or remove the existing one first"


class WriteError(AdapterHubError, OSError):
    """Writing a build's output failed (disk full, no permission); nothing is left half-written."""

    default_hint = "Free disk space or fix the permissions of the output's directory, then retry"


class QuantizationError(AdapterHubError, ValueError):
    """A weight cannot be quantized as asked, or a quantized weight's stored state is invalid."""

    default_hint = ("Check the weight's dtype and the quantizer config, or re-quantize the "
                    "checkpoint with 'adapterhub quantize'")


# --- hub -----------------------------------------------------------------------------------


class AuthenticationError(RegistryError):
    """A hub refused the request: no token, or an unknown, revoked or expired one (HTTP 401)."""

    default_hint = ("Set ADAPTERHUB_TOKEN or run 'adapterhub login URL' with a token from "
                    "'adapterhub token create' on the hub")


class PermissionDeniedError(RegistryError):
    """The token is valid but its scopes do not cover the request (HTTP 403)."""

    default_hint = ("Ask the hub's admin for a token with the scope shown (adapterhub token "
                    "create --scope LEVEL:NAMESPACE)")
