"""A Hugging Face commit's files, kept byte for byte (see :mod:`registry_db.files`).

:func:`kept_files` decides what a new version keeps: nothing when the committed files are
exactly what the hub renders (the version is then identical to a native push of the same
adapter); otherwise every committed file, each either *rendered* (its bytes are the hub's
own), a safetensors file split into its header and the version's tensor blobs, or one blob.
:func:`read_kept` puts the files back together when the hub renders a version.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from adapterhub.errors import IntegrityError, InvalidRequestError
from registry_db.files import FILES_LABEL, KeptFile, listing_digest

if TYPE_CHECKING:
    from adapterhub.io.package import AdapterPackage

MAX_PATH = 1024


def check_path(path: str) -> str:
    """A repository path, refused when it could escape or confuse a checkout."""
    parts = path.split("/")
    if not path or len(path) > MAX_PATH or "\\" in path or "\0" in path or \
            any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise InvalidRequestError(f"invalid path in repository: {path[:200]!r}",
                                  hint="Paths are relative, '/'-separated, without '.' or "
                                       "'..' parts")
    return path


def _digest(data: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def safetensors_parts(data: bytes, tensor_blobs: set[str]) -> tuple[bytes, list[str]] | None:
    """``(header bytes, [header digest, tensor blob digest …])`` when ``data`` is a
    safetensors file whose tensors are, back to back in offset order, exactly blobs of
    ``tensor_blobs``; else None."""
    if len(data) < 8:
        return None
    (length,) = struct.unpack_from("<Q", data)
    start = 8 + length
    if start > len(data):
        return None
    try:
        header = json.loads(data[8:start])
        spans = sorted(tuple(v["data_offsets"]) for k, v in header.items()
                       if k != "__metadata__")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    parts, position = [_digest(data[:start])], 0
    for begin, end in spans:
        if begin != position or end < begin:
            return None
        digest = _digest(memoryview(data)[start + begin:start + end])
        if digest not in tensor_blobs:
            return None
        parts.append(digest)
        position = end
    return (data[:start], parts) if start + position == len(data) else None


def kept_files(files: Mapping[str, bytes], rendered: Mapping[str, bytes],
               package: AdapterPackage) -> tuple[list[KeptFile], dict[str, bytes], dict]:
    """``(kept files, blobs to store, labels)`` for a commit whose files are ``files``;
    ``([], {}, {})`` when they are exactly what the hub renders for ``package``."""
    if dict(files) == dict(rendered):
        return [], {}, {}
    tensors = {e.digest for e in package.manifest.tensors.values()}
    kept, blobs = [], {}
    for path, data in sorted(files.items()):
        sha256 = hashlib.sha256(data).hexdigest()
        if rendered.get(path) == data:
            kept.append(KeptFile(path, sha256, len(data), None))
            continue
        split = safetensors_parts(data, tensors) if path.endswith(".safetensors") else None
        if split is None:
            parts = [_digest(data)]
            blobs[parts[0]] = data
        else:
            header, parts = split
            blobs[parts[0]] = header
        kept.append(KeptFile(path, sha256, len(data), tuple(parts)))
    return kept, blobs, {FILES_LABEL: listing_digest(kept)}


def read_kept(kept: list[KeptFile], rendered: Mapping[str, bytes],
              read_blob: Callable[[str], bytes | bytearray]) -> dict[str, bytes]:
    """The files of a version that keeps ``kept``: rendered ones from ``rendered``, the rest
    joined from their blobs (``read_blob(digest)``), each checked against its sha256."""
    out = {}
    for f in kept:
        if f.parts is None:
            data = rendered.get(f.path)
            if data is None:
                raise IntegrityError(f"kept file {f.path!r} is no longer rendered")
        else:
            data = b"".join(read_blob(d) for d in f.parts)
        if hashlib.sha256(data).hexdigest() != f.sha256:
            raise IntegrityError(f"kept file {f.path!r} does not have its sha256 {f.sha256}")
        out[f.path] = data
    return out
