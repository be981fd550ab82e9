"""Canonical JSON and sha256 digests: how content gets its address."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from registry_db.errors import FormatError, InvalidRequestError

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII only: the same content always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def sha256_digest(data: bytes | bytearray | memoryview) -> str:
    """``"sha256:<64 hex>"`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST_RE.fullmatch(value) is not None


def check_digest(digest: str) -> str:
    """``digest`` if it is a blob digest, else :class:`InvalidRequestError`."""
    if not is_digest(digest):
        raise InvalidRequestError(f"invalid blob digest {str(digest)[:80]!r}: expected "
                                  f"sha256:<64 lowercase hex>")
    return digest


MAX_JSON_DEPTH = 32


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: str | bytes | bytearray | memoryview, *, what: str) -> Any:
    """Parse untrusted JSON strictly: no ``NaN``/``Infinity``, nesting at most
    :data:`MAX_JSON_DEPTH` deep. Raises :class:`~registry_db.errors.FormatError` naming
    ``what``."""
    try:
        value = json.loads(bytes(data) if isinstance(data, memoryview) else data,
                           parse_constant=_no_constant)
    except RecursionError:
        raise FormatError(f"{what}: not valid JSON (nested too deeply to be read)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{what}: not valid JSON ({exc})") from None
    check_json_depth(value, what)
    return value


def check_json_depth(value: Any, what: str) -> None:
    """Raise :class:`~registry_db.errors.FormatError` if ``value`` nests deeper than
    :data:`MAX_JSON_DEPTH` or holds a float that is not finite (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise FormatError(f"{what} holds {item}, which is not a finite number")
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise FormatError(f"{what} nests more than {MAX_JSON_DEPTH} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
