"""A Hugging Face cache tree, so that ``huggingface_hub`` (and PEFT, transformers, vLLM) load an
adapter by repo id with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at it.

Layout (huggingface_hub's ``file_download``)::

    models--<ns>--<name>/
        blobs/<etag>                       file contents; etag = sha256 for LFS files
                                           (*.safetensors), the git blob sha1 otherwise
        snapshots/<commit>/<file>          relative symlinks to ../../blobs/<etag>
        refs/<revision>                    the commit hash, no trailing newline

The commit hash is derived from the files' contents, so exporting the same files twice gives
the same snapshot.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from adapterhub.errors import ExportError
from adapterhub.io.safetensors import write_bytes_atomic
from registry_db.digests import canonical_json

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


def repo_folder(repo_id: str) -> str:
    """``ns/name`` → ``models--ns--name`` (huggingface_hub's ``repo_folder_name``)."""
    return "models--" + repo_id.replace("/", "--")


def etag(name: str, data: bytes) -> str:
    """The name huggingface_hub gives a file's blob."""
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hf_cache(files: dict[str, bytes], cache_dir: str | os.PathLike[str], repo_id: str,
                   *, revision: str = "main") -> Path:
    """Add ``files`` as a snapshot of model repo ``repo_id`` under ``cache_dir``; point
    ``refs/<revision>`` at it. Returns the snapshot directory."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ExportError(f"invalid repo id {repo_id!r}: {exc}") from None
    if repo_id.count("/") != 1 or not revision or "/" in revision or revision.startswith("."):
        raise ExportError(f"a cache entry needs a repo id 'namespace/name' and a plain revision "
                          f"name; got {repo_id!r} and {revision!r}")
    repo = Path(cache_dir) / repo_folder(repo_id)
    tags = {name: etag(name, data) for name, data in files.items()}
    commit = hashlib.sha1(canonical_json(sorted(tags.items()))).hexdigest()
    for sub in ("blobs", "snapshots", "refs"):
        (repo / sub).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / tags[name]
        if not blob.exists():
            write_bytes_atomic(blob, data)
    snapshot = repo / "snapshots" / commit
    if not snapshot.exists():
        tmp = repo / "snapshots" / f".{commit}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in files:
            (tmp / name).symlink_to(Path("..", "..", "blobs", tags[name]))
        os.replace(tmp, snapshot)
    write_bytes_atomic(repo / "refs" / revision, commit.encode())
    return snapshot
