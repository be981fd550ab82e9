"""A hub's registry over HTTP, for the commands that read and maintain one: ``list``, ``log``,
``show``, ``tag``, ``rm``, ``gc``, ``verify`` with ``--from URL|REMOTE``.

:class:`HttpRegistry` has the same methods, arguments and results as those of
:class:`~adapterhub.registry.Registry`, so the commands print the same text and ``--json``
either way; the hub's scopes decide what each shows (a token sees the repositories it may
read; ``gc`` and ``verify`` need ``admin`` on the whole hub).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from adapterhub.errors import RefError
from adapterhub.registry.http_client import HubClient

if TYPE_CHECKING:
    from registry_db import GcReport, VerifyReport, VersionInfo


class HttpRegistry:
    """The registry behind an ``adapterhub serve`` hub at ``url`` (token as for push/pull)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.client = HubClient(self.url)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HttpRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HttpRegistry({self.url!r})"

    # -- reading ----------------------------------------------------------------------------

    def resolve(self, ref: str) -> VersionInfo:
        from registry_db import VersionInfo

        return VersionInfo.from_dict(self.client.get_json("/api/v1/resolve",
                                                          params={"ref": ref}))

    def list(self, prefix: str | None = None, *, method: str | None = None,
             base: str | None = None, labels: dict[str, str] | None = None
             ) -> list[VersionInfo]:
        from registry_db import VersionInfo

        params: dict[str, Any] = {"prefix": prefix, "method": method, "base": base,
                                  "label": [f"{k}={v}" for k, v in (labels or {}).items()]}
        rows = self.client.get_json("/api/v1/versions",
                                    params={k: v for k, v in params.items() if v})
        return [VersionInfo.from_dict(row) for row in rows]

    def log(self, name: str) -> list[VersionInfo]:
        from registry_db import VersionInfo, validate_name

        return [VersionInfo.from_dict(row)
                for row in self.client.get_json(f"/api/v1/repos/{validate_name(name)}/log")]

    # -- tags, deletion, maintenance ----------------------------------------------------------

    def tag(self, ref: str, tag: str) -> VersionInfo:
        from registry_db import VersionInfo, parse_ref

        name = parse_ref(ref).name
        return VersionInfo.from_dict(self.client.request(
            "PUT", f"/api/v1/repos/{name}/tags/{tag}", json={"ref": ref}).json())

    def untag(self, ref: str) -> VersionInfo:
        from registry_db import VersionInfo, parse_ref

        parsed = parse_ref(ref)
        if parsed.tag is None:
            raise RefError(f"{ref!r} names no tag", hint="Write it as ns/name:TAG")
        return VersionInfo.from_dict(self.client.request(
            "DELETE", f"/api/v1/repos/{parsed.name}/tags/{parsed.tag}").json())

    def rm(self, ref: str) -> VersionInfo:
        from registry_db import VersionInfo

        version = self.resolve(ref)
        return VersionInfo.from_dict(self.client.request(
            "DELETE", f"/api/v1/repos/{version.name}/versions/{version.number}").json())

    def gc(self, *, keep_last: int | None = None, keep_tagged: bool = False,
           per_label: str | None = None, prefix: str | None = None, dry_run: bool = False,
           grace: timedelta = timedelta(hours=1)) -> GcReport:
        from registry_db import GcReport

        body = {"keep_last": keep_last, "keep_tagged": keep_tagged, "per_label": per_label,
                "prefix": prefix, "dry_run": dry_run, "grace_s": grace.total_seconds()}
        return GcReport.from_dict(self.client.post_json("/api/v1/gc", body))

    def verify(self, *, deep: bool = False) -> VerifyReport:
        from registry_db import VerifyReport

        path = "/api/v1/verify?deep=true" if deep else "/api/v1/verify"
        return VerifyReport.from_dict(self.client.post_json(path, {}))
