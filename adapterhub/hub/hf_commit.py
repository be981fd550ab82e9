"""The Hugging Face NDJSON commit: operations on ``main``'s files become the next version.

``POST /api/models/{ns}/{name}/commit/main`` carries a header, ``file`` (inline, base64),
``lfsFile`` (by sha256: read from what the caller uploaded through Xet, then from an LFS
object it uploaded or a blob of a version it may read, then from a file already in the
repository), ``deletedFile`` and ``deletedFolder`` operations. A committed ``README.md`` must
have metadata the Hub accepts (:mod:`adapterhub.hub.model_card`). They apply to the newest
version's files; the adapter files among the result are read as an adapter
(:func:`adapterhub.io.formats.read_adapter`) and pushed as the next version, keeping every
committed file byte for byte (:mod:`adapterhub.hub.hf_files`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from adapterhub.errors import (AdapterNotFoundError, EntryNotFoundError, IntegrityError,
                               InvalidRequestError, PreconditionFailedError)
from adapterhub.hub.auth import registry
from adapterhub.hub.context import hub_of
from adapterhub.hub.hf_files import check_path, kept_files
from adapterhub.hub.hf_read import commit_id, repository
from adapterhub.hub.hf_write import MAX_COMMIT_LINES, OID_RE, base_url, head_files, main_only
from adapterhub.hub.hf_xet import xet_file
from adapterhub.hub.model_card import CARD_FILE, validate_card_bytes
from adapterhub.hub.render import RenderedFile
from adapterhub.io.formats.peft import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.io.formats.repo import ADAPTER_FILES, package_from_files, repo_files
from adapterhub.io.package import MANIFEST_FILE, TENSORS_FILE
from adapterhub.registry import Registry
from registry_db.digests import parse_json

router = APIRouter()


class Operations:
    """A parsed commit: header, inline files, LFS files ``path → (oid, size)``, deletions
    ``(path, folder?)``."""

    def __init__(self) -> None:
        self.header: dict[str, Any] = {}
        self.inline: dict[str, bytes] = {}
        self.lfs: dict[str, tuple[str, int]] = {}
        self.deleted: list[tuple[str, bool]] = []


def parse_commit(raw: bytes) -> Operations:
    ops = Operations()
    lines = raw.splitlines()
    if len(lines) > MAX_COMMIT_LINES:
        raise InvalidRequestError(f"a commit has at most {MAX_COMMIT_LINES} operations")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = parse_json(line, what=f"commit line {number}")
            key, value = item["key"], item["value"]
            if key == "header":
                ops.header = dict(value)
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise ValueError("only base64 content is supported")
                ops.inline[check_path(str(value["path"]))] = base64.b64decode(
                    value["content"], validate=True)
            elif key == "lfsFile":
                oid, size = value["oid"], value["size"]
                if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) \
                        or not OID_RE.match(oid) or type(size) is not int:
                    raise ValueError("lfsFile needs algo sha256, a hex oid and a size")
                ops.lfs[check_path(str(value["path"]))] = (oid, size)
            elif key in ("deletedFile", "deletedFolder"):
                path = check_path(str(value["path"]).rstrip("/"))
                ops.deleted.append((path, key == "deletedFolder"))
            else:
                raise ValueError(f"unknown operation {str(key)[:40]!r}")
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise InvalidRequestError(f"commit line {number} is malformed: "
                                      f"{str(exc)[:200]}") from None
    return ops


@router.post("/api/models/{namespace}/{name}/commit/{revision}")
async def commit(request: Request, namespace: str, name: str, revision: str,
                 reg: Registry = Depends(registry)) -> dict[str, Any]:
    """Apply the operations to the newest version's files; the result is the next version."""
    repo = await run_in_threadpool(repository, reg, namespace, name)
    reg.caller.require("write", repo)
    main_only(request, revision)
    raw = await request.body()
    ops = await run_in_threadpool(parse_commit, raw)
    version = await run_in_threadpool(_apply, request, reg, repo, ops)
    oid = commit_id(version)
    return {"commitUrl": f"{base_url(request)}/{repo}/commit/{oid}", "commitOid": oid,
            "pullRequestUrl": None}


def _delete(files: dict[str, bytes], path: str, folder: bool, repo: str) -> None:
    gone = [p for p in files if p == path or (folder and p.startswith(path + "/"))]
    if not gone:
        raise EntryNotFoundError(f"{path[:200]!r} is not in {repo}; nothing to delete")
    for p in gone:
        del files[p]


def _apply(request: Request, reg: Registry, repo: str, ops: Operations):
    head, current = head_files(request, reg, repo)
    files = {path: f.content() for path, f in current.items()}
    parent = ops.header.get("parentCommit")
    if parent is not None and parent != head:
        raise PreconditionFailedError(f"main of {repo} is at {head}, not {str(parent)[:40]}",
                                      hint="Pull the new head and commit again")
    changed = {p for p in [*ops.inline, *ops.lfs] if p in ADAPTER_FILES}
    if changed:  # new weights replace the other layout's; a new layout without a manifest
        if changed & {CONFIG_FILE, WEIGHTS_FILE}:  # is a plain PEFT adapter
            files.pop(TENSORS_FILE, None)
        if TENSORS_FILE in changed:
            files.pop(WEIGHTS_FILE, None)
            files.pop(CONFIG_FILE, None)
        if MANIFEST_FILE not in changed:
            files.pop(MANIFEST_FILE, None)
    for path, folder in ops.deleted:
        _delete(files, path, folder, repo)
    files.update(ops.inline)
    for path, (oid, size) in ops.lfs.items():
        files[path] = _lfs_bytes(request, reg, current, path, oid, size)
    for path in files:
        if any(other.startswith(path + "/") for other in files):
            raise InvalidRequestError(f"{path[:200]!r} would be both a file and a folder")
    if CARD_FILE in ops.inline or CARD_FILE in ops.lfs:
        validate_card_bytes(files[CARD_FILE])
    package = package_from_files(files)
    kept, blobs, labels = kept_files(files, repo_files(package), package)
    if blobs:
        reg.service.blobs.write_many(((d, data, 1) for d, data in blobs.items()),
                                     caller=reg.caller)
    message = ops.header.get("summary")
    message = message[:64 * 1024] if isinstance(message, str) else None
    result = reg.push(package, repo, message=message, labels=labels, files=kept,
                      author=reg.caller.actor, progress=False)
    return result.version


def _lfs_bytes(request: Request, reg: Registry, current: dict[str, RenderedFile], path: str,
               oid: str, size: int) -> bytes:
    """An ``lfsFile``'s bytes, only from what the caller may see (see the module
    docstring)."""
    pieces = xet_file(hub_of(request).xet, oid, size, reg.caller)
    if pieces is not None:
        return b"".join(pieces)
    try:
        return _sized(bytes(reg.read_blob(f"sha256:{oid}")), path, oid, size)
    except AdapterNotFoundError:
        pass
    for f in current.values():
        if f.sha256 == oid:
            return _sized(f.content(), path, oid, size)
    raise IntegrityError(f"{path}: LFS object {oid} was not uploaded",
                         hint="Upload it (through Xet or the LFS batch API) first")


def _sized(data: bytes, path: str, oid: str, size: int) -> bytes:
    if len(data) != size:
        raise IntegrityError(f"{path}: LFS object {oid} has {len(data)} bytes, not {size}")
    return data
