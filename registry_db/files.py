"""Files kept byte for byte: what a Hugging Face commit stored, served back exactly.

The hub renders a version's files from its manifest and tensors; clients that commit files
through the Hugging Face API expect them back byte for byte (etags, ``oid``s and caches rely
on it). When a commit's files are not what the hub would render, the version keeps them:

- a file is a list of blobs (:class:`KeptFile` ``parts``): a safetensors file is its header
  bytes and then one blob per tensor, the version's own tensor blobs (tensors stay
  deduplicated); any other file is one blob;
- a file whose bytes are what the hub renders keeps no parts (``parts`` None);
- the listing is part of the version's identity: the hub adds the manifest label
  :data:`FILES_LABEL` (:func:`listing_digest`), so two commits that differ only in, say,
  the model card are two versions.

A version with kept files has exactly those files. Their blobs are visible to whoever may
read the version, and gc keeps them while it lives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from registry_db.reads import batched
from registry_db.models_hub import VersionFile, VersionFilePart

#: the manifest label that names a version's kept files
FILES_LABEL = "hf.files"


@dataclass(frozen=True)
class KeptFile:
    path: str
    sha256: str  # hex
    size: int
    parts: tuple[str, ...] | None  # blob digests, or None: the hub renders it


def listing_digest(files: Iterable[KeptFile]) -> str:
    """``sha256:`` of the canonical ``{path: sha256}`` of a listing."""
    listing = {f.path: f.sha256 for f in files}
    text = json.dumps(listing, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def files_of(s: Session, version_id: int) -> list[KeptFile]:
    """The kept files of a version, by path (empty: the hub renders all of its files)."""
    parts: dict[str, list[str]] = {}
    for path, digest in s.execute(select(VersionFilePart.path, VersionFilePart.blob_digest)
                                  .where(VersionFilePart.version_id == version_id)
                                  .order_by(VersionFilePart.path, VersionFilePart.index)):
        parts.setdefault(path, []).append(digest)
    rows = s.scalars(select(VersionFile).where(VersionFile.version_id == version_id)
                     .order_by(VersionFile.path))
    return [KeptFile(r.path, r.sha256, r.size, None if r.rendered else tuple(parts[r.path]))
            for r in rows]


def part_blobs(s: Session) -> set[str]:
    """Blobs kept files are made of (gc keeps them)."""
    return set(s.scalars(select(VersionFilePart.blob_digest).distinct()))


def forget_versions(s: Session, version_ids: list[int]) -> None:
    for batch in batched(version_ids):
        for model in (VersionFilePart, VersionFile):
            s.execute(delete(model).where(model.version_id.in_(batch)))
