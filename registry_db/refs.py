"""Names and refs: ``ns/name``, ``ns/name@3``, ``ns/name:prod``, ``ns/name@sha256:<prefix>``.

Every part of a name is ``[a-z0-9][a-z0-9._-]{0,63}`` and may not contain ``..``, so a name is
safe as a path, a URL segment and a git-style ref. Tags use the same alphabet but may not look
like a version (``3``, ``v3``, ``sha256…``); ``latest`` is reserved for the newest version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry_db.errors import RefError

PART_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_LIKE_RE = re.compile(r"^(v?[0-9]+|sha256.*)$")
VERSION_NUMBER_RE = re.compile(r"[1-9][0-9]{0,17}")
DIGEST_PREFIX_RE = re.compile(r"^sha256:[0-9a-f]{12,64}$")
MIN_DIGEST_PREFIX = 12
LATEST = "latest"


def _check_part(part: str, what: str, whole: str) -> None:
    if not PART_RE.fullmatch(part) or ".." in part:
        shown = whole if len(whole) <= 80 else whole[:77] + "..."
        raise RefError(
            f"invalid {what} {shown!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, without '..'")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name ``ns/name``; else raise."""
    if not isinstance(name, str):
        raise RefError(f"a repository name must be a string; got {type(name).__name__}")
    parts = name.split("/")
    if len(parts) != 2:
        raise RefError(f"invalid repository name {name[:80]!r}: it must be "
                               f"'namespace/name' (exactly one '/')")
    for part in parts:
        _check_part(part, "repository name", name)
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag name; else raise :class:`RefError`."""
    if not isinstance(tag, str):
        raise RefError(f"a tag must be a string; got {type(tag).__name__}")
    _check_part(tag, "tag", tag)
    if VERSION_LIKE_RE.fullmatch(tag):
        raise RefError(f"tag {tag!r} looks like a version number or digest; refs would "
                               f"be ambiguous", hint="Pick a word such as 'prod' or 'candidate'")
    if tag == LATEST:
        raise RefError("'latest' is reserved: it always means the newest version")
    return tag


def validate_key(key: str, what: str = "label key") -> str:
    """Return ``key`` if it is a valid label key or remote name (the name-part alphabet)."""
    if not isinstance(key, str):
        raise RefError(f"a {what} must be a string; got {type(key).__name__}")
    _check_part(key, what, key)
    return key


@dataclass(frozen=True)
class Ref:
    """A parsed ref: a repository ``name`` plus at most one selector."""

    name: str
    number: int | None = None
    tag: str | None = None
    digest_prefix: str | None = None

    def __str__(self) -> str:
        if self.number is not None:
            return f"{self.name}@{self.number}"
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        if self.digest_prefix is not None:
            return f"{self.name}@{self.digest_prefix}"
        return self.name

    @property
    def is_latest(self) -> bool:
        return self.number is None and self.digest_prefix is None and self.tag in (None, LATEST)


def parse_ref(text: str) -> Ref:
    """Parse a ref; raise :class:`RefError` saying what is wrong."""
    if not isinstance(text, str):
        raise RefError(f"a ref must be a string; got {type(text).__name__}")
    if "@" in text:
        name, _, selector = text.partition("@")
        validate_name(name)
        if VERSION_NUMBER_RE.fullmatch(selector):
            return Ref(name, number=int(selector))
        if selector.startswith("sha256:"):
            if not DIGEST_PREFIX_RE.fullmatch(selector):
                raise RefError(
                    f"invalid digest in ref {text[:100]!r}: use sha256: and at least "
                    f"{MIN_DIGEST_PREFIX} lowercase hex digits")
            return Ref(name, digest_prefix=selector)
        raise RefError(f"invalid ref {text[:100]!r}: after '@' comes a version number "
                               f"(1, 2, ...) or sha256:<hex>")
    if ":" in text:
        name, _, tag = text.partition(":")
        validate_name(name)
        if tag == LATEST:
            return Ref(name)
        return Ref(name, tag=validate_tag(tag))
    return Ref(validate_name(text))


def looks_like_ref(text: str) -> bool:
    """Whether ``text`` parses as a ref (used to tell refs from paths)."""
    try:
        parse_ref(text)
    except RefError:
        return False
    return True
