"""One Hugging Face model repository as a remote: a version is a commit tagged ``v<N>``.

``hf://team/bot`` holds the registry repository ``team/bot`` (the Hub's name lowercased):
refs given to it must name that repository. Each version is one commit whose files are
:func:`adapterhub.io.formats.repo.repo_files` (PEFT layout plus ``adapter.json``, or the native
layout), tagged ``v<N>`` (the next number) and with any tags asked for; ``main`` is the newest.
Pulling reads ``adapter.json`` and checks every tensor against it, so a version keeps its
digest, lineage, metrics and labels; a repository without one (a plain PEFT adapter pushed by
other tools) is imported as a new version.

The Hub stores whole files, so every push uploads the files that changed (``huggingface_hub``
skips unchanged ones) and there is no blob negotiation. Endpoint and token are
``huggingface_hub``'s own: ``HF_ENDPOINT``, ``HF_TOKEN`` or ``hf auth login``. Uploads go through Xet
when ``hf_xet`` is installed (``adapterhub serve`` speaks it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from adapterhub.errors import AdapterNotFoundError, MissingBlobsError, RefError, RegistryError
from adapterhub.plugin_api import BlobStream, Buffer, ProgressCallback, Remote

if TYPE_CHECKING:
    from adapterhub.plugin_api import AdapterPackage, CommitResult, Manifest, VersionInfo

NUMBER_TAG = re.compile(r"^v([1-9][0-9]*)$")
XET_HINT = "The endpoint does not speak Xet: set HF_HUB_DISABLE_XET=1"


class HfRemote(Remote):
    """``hf://namespace/repo``."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        from huggingface_hub import HfApi

        self.repo_id = url.split("://", 1)[1].strip("/")
        from adapterhub.plugin_api import validate_name

        self.name = validate_name(self.repo_id.lower())
        self.api = HfApi()
        self._packages: dict[str, AdapterPackage] = {}  # by commit
        self._spool: dict[str, bytes] = {}  # blobs waiting for their commit

    # -- Hub calls --------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        """Run a huggingface_hub call; its errors become adapterhub errors."""
        from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError,
                                            RepositoryNotFoundError, RevisionNotFoundError)

        try:
            return fn(*args, **kwargs)
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
            raise AdapterNotFoundError(f"{self.url}: {what}: {str(exc).splitlines()[0]}") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            from adapterhub.errors import AuthenticationError, PermissionDeniedError

            cls = {401: AuthenticationError, 403: PermissionDeniedError}.get(status,
                                                                            RegistryError)
            hint = None
            if status in (401, 403):
                hint = "Set HF_TOKEN (or run 'hf auth login') with access to the repository"
            elif "xet" in str(exc).lower():
                hint = XET_HINT
            raise cls(f"{self.url}: {what}: {str(exc).splitlines()[0]}", hint=hint) from None
        except OSError as exc:  # connection failures (hf_xet's among them)
            hint = XET_HINT if "xet" in str(exc).lower() else "Check HF_ENDPOINT and the network"
            raise RegistryError(f"{self.url}: {what}: {str(exc).splitlines()[0]}",
                                hint=hint) from None

    def _check(self, name: str) -> None:
        if name != self.name:
            raise RefError(f"{self.url} holds the repository {self.name}, not {name}",
                           hint=f"Use {self.name} with this remote, or hf://{name}")

    def _tags(self) -> dict[str, str]:
        """``{tag: commit}`` of the repository (empty if it does not exist yet)."""
        try:
            refs = self._call("list refs", self.api.list_repo_refs, self.repo_id)
        except AdapterNotFoundError:
            return {}
        return {t.name: t.target_commit for t in refs.tags}

    def _package(self, commit: str) -> AdapterPackage:
        if commit not in self._packages:
            from huggingface_hub import snapshot_download
            from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                               enable_progress_bars)

            from adapterhub.plugin_api import ADAPTER_FILES, read_adapter

            quiet = are_progress_bars_disabled()
            disable_progress_bars()  # a few small files: adapterhub's own bar is enough
            try:
                path = self._call(f"download {commit}", snapshot_download, self.repo_id,
                                  revision=commit, allow_patterns=list(ADAPTER_FILES),
                                  endpoint=self.api.endpoint)
            finally:
                if not quiet:
                    enable_progress_bars()
            self._packages[commit] = read_adapter(path)
        return self._packages[commit]

    def _version(self, revision: str, tags: dict[str, str] | None = None) -> VersionInfo:
        from adapterhub.plugin_api import VersionInfo

        info = self._call(f"revision {revision}", self.api.model_info, self.repo_id,
                          revision=revision)
        commit = info.sha
        manifest = self._package(commit).manifest
        tags = self._tags() if tags is None else tags
        here = [t for t, c in tags.items() if c == commit]
        numbers = [int(m.group(1)) for t in here if (m := NUMBER_TAG.match(t))]
        base = manifest.base_model
        return VersionInfo(
            name=self.name, number=max(numbers, default=0), digest=manifest.digest,
            method=manifest.method_name, base_name=base.get("name"),
            base_fingerprint=base.get("fingerprint"), size=manifest.nbytes,
            created_at=info.last_modified or datetime.now(timezone.utc),
            author=info.author, tags=tuple(sorted(t for t in here if not NUMBER_TAG.match(t))),
            labels={k: str(v) for k, v in manifest.labels.items()}, parents=manifest.parents,
            manifest=manifest)

    # -- Remote -----------------------------------------------------------------------------

    def resolve(self, ref: str) -> VersionInfo:
        from adapterhub.plugin_api import parse_ref

        parsed = parse_ref(ref)
        self._check(parsed.name)
        if parsed.digest_prefix is not None:
            found = self._search(lambda d: d.startswith(parsed.digest_prefix))
            if found is None:
                raise AdapterNotFoundError(f"{self.url} has no version {ref}")
            return found
        if parsed.number is not None:
            return self._version(f"v{parsed.number}")
        return self._version(parsed.tag or "main")

    def _search(self, match: Callable[[str], bool]) -> VersionInfo | None:
        """The newest ``v<N>`` version whose digest ``match``es."""
        tags = self._tags()
        numbered = sorted(((int(m.group(1)), t) for t in tags if (m := NUMBER_TAG.match(t))),
                          reverse=True)
        for _, tag in numbered:
            if match(self._package(tags[tag]).manifest.digest):
                return self._version(tag, tags)
        return None

    def find(self, digest: str) -> VersionInfo | None:
        return self._search(lambda d: d == digest)

    def missing_blobs(self, digests: Iterable[str]) -> set[str]:
        return set(digests) - set(self._spool)  # the Hub keeps files, not blobs: send all

    def upload_blobs(self, blobs: Iterable[tuple[str, Buffer | BlobStream, int]], *,
                     progress: ProgressCallback | None = None) -> None:
        for digest, data, _ in blobs:  # (the Hub takes whole files)
            self._spool[digest] = bytes(data.read() if isinstance(data, BlobStream) else data)
            if progress is not None:
                progress(len(self._spool[digest]))

    def download_blobs(self, digests: Iterable[str], *,
                       progress: ProgressCallback | None = None
                       ) -> Iterator[tuple[str, bytes]]:
        from adapterhub.plugin_api import tensor_bytes

        known = {e.digest: package.tensors[name] for package in self._packages.values()
                 for name, e in package.manifest.tensors.items()}
        for digest in digests:
            if digest not in known:
                raise AdapterNotFoundError(f"{self.url}: no downloaded version has blob {digest}")
            data = bytes(tensor_bytes(known[digest]))
            if progress is not None:
                progress(len(data))
            yield digest, data

    def commit(self, name: str, manifest: Manifest, *, message: str | None = None,
               author: str | None = None, tags: Sequence[str] = (),
               created_at: datetime | None = None) -> CommitResult:
        from huggingface_hub import CommitOperationAdd

        from adapterhub.plugin_api import AdapterPackage, CommitResult, repo_files

        self._check(name)
        existing = self.find(manifest.digest)
        if existing is None:
            missing = sorted({e.digest for e in manifest.tensors.values()} - set(self._spool))
            if missing:
                raise MissingBlobsError(f"{self.url}: blobs {missing[:3]} were not sent",
                                        digests=missing)
            files = repo_files(AdapterPackage.from_blobs(manifest, self._spool, raw=True))
            self._call("create the repository", self.api.create_repo, self.repo_id,
                       exist_ok=True)
            info = self._call("commit", self.api.create_commit, self.repo_id,
                              operations=[CommitOperationAdd(path, data)
                                          for path, data in sorted(files.items())],
                              commit_message=message or f"adapterhub version "
                                                        f"{manifest.digest[:19]}…",
                              commit_description=f"adapterhub version {manifest.digest}")
            commit = info.oid
        else:
            commit = self._call("resolve", self.api.model_info, self.repo_id,
                                revision=f"v{existing.number}").sha
        current = self._tags()
        if not any(c == commit and NUMBER_TAG.match(t) for t, c in current.items()):
            number = 1 + max((int(m.group(1)) for t in current if (m := NUMBER_TAG.match(t))),
                             default=0)
            self._call("tag", self.api.create_tag, self.repo_id, tag=f"v{number}",
                       revision=commit)
        for tag in tags:
            if current.get(tag) == commit:
                continue
            if tag in current:
                self._call(f"move tag {tag}", self.api.delete_tag, self.repo_id, tag=tag)
            self._call(f"tag {tag}", self.api.create_tag, self.repo_id, tag=tag,
                       revision=commit)
        self._spool.clear()
        return CommitResult(self._version(commit), existing is None)
