"""The page of one version, at the addresses Hugging Face users type.

========================================  =========================================
``/{ns}/{name}``                          the newest live version
``/{ns}/{name}/v3``, ``/{ns}/{name}@3``   version 3
``/{ns}/{name}/prod``, ``…:prod``         the version a tag points at
``/{ns}/{name}/<40 hex>``                 the version whose commit id this is
``/{ns}/{name}/native/v3/adapter.safetensors``  the native tensors file, streamed
========================================  =========================================

Browsers (``Accept: text/html``) get the page; every other client gets the version as JSON
(what ``GET /api/v1/resolve`` answers), so these paths stay an API. Errors are the API's:
401 without a token under ``--auth required``, 403 for a token that may not read the
repository, 404 for what does not exist — as a page for browsers, JSON for the rest.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.convertors import Convertor, register_url_convertor

from adapterhub.errors import (AdapterHubError, AdapterNotFoundError, EntryNotFoundError,
                               RefError, RevisionNotFoundError)
from adapterhub.hub.auth import registry
from adapterhub.hub.bodies import json_response
from adapterhub.hub.hf_read import commit_id, files_of, repository, resolve_revision
from adapterhub.hub.pages.card import card_html, model_card
from adapterhub.hub.pages.details import (NATIVE_TENSORS, details_html, files_html,
                                          labels_html, metrics_table, native_stream,
                                          snippets_html, stored_size, tensors_html)
from adapterhub.hub.pages.layout import (attr, diff_href, html_errors, page, repo_href,
                                         short_digest, tags_html, version_link, wants_html)
from adapterhub.hub.pages.lineage import lineage_html
from adapterhub.hub.pages.plot import metrics_html, with_manifests
from adapterhub.registry import Registry
from registry_db import VersionInfo

router = APIRouter()


class PageNamespace(Convertor):
    """A path's first segment when it may be a repository's namespace: anything but
    ``api``, so ``/api/…`` paths that no route serves answer as before (404, 405)."""

    regex = "(?!api/)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("page_ns", PageNamespace())


def _answer(request: Request, reg: Registry, repo: str, version: VersionInfo) -> Response:
    if not wants_html(request):
        return json_response(version.to_dict(with_manifest=True))
    return version_page(request, reg, repo, version)


@router.get("/{namespace:page_ns}/{name}")
@html_errors
def latest_version(request: Request, namespace: str, name: str,
                   reg: Registry = Depends(registry)) -> Response:
    """The newest version, or the one a ref suffix names (``bot@3``, ``bot:prod``,
    ``bot@sha256:…``)."""
    cut = min((i for i in (name.find("@"), name.find(":")) if i >= 0), default=len(name))
    repo = repository(reg, namespace, name[:cut])
    ref = repo + name[cut:]
    try:
        version = reg.resolve(ref)
    except AdapterNotFoundError:
        if cut == len(name) and wants_html(request):  # an empty repository
            return RedirectResponse(repo_href(repo), status_code=303)
        raise RevisionNotFoundError(f"{ref[:200]} not found") from None
    except RefError as exc:
        raise RevisionNotFoundError(f"{ref[:200]} not found: {exc.message}") from None
    return _answer(request, reg, repo, version)


@router.get("/{namespace:page_ns}/{name}/{revision}")
@html_errors
def version_at(request: Request, namespace: str, name: str, revision: str,
               reg: Registry = Depends(registry)) -> Response:
    """A version by revision: ``v3``, a tag, ``main``, or a 40-hex commit id."""
    repo = repository(reg, namespace, name)
    return _answer(request, reg, repo, resolve_revision(reg, repo, revision))


@router.get("/{namespace:page_ns}/{name}/native/{revision}/{path}")
@html_errors
def native_file(request: Request, namespace: str, name: str, revision: str, path: str,
                reg: Registry = Depends(registry)) -> Response:
    """The native ``adapter.safetensors`` of a version (``adapter.json`` is served with the
    Hugging Face files), streamed one blob at a time."""
    repo = repository(reg, namespace, name)
    version = resolve_revision(reg, repo, revision)
    if path != NATIVE_TENSORS:
        raise EntryNotFoundError(f"{path[:200]!r} is not a native file of {repo}; the native "
                                 f"layout is adapter.json and {NATIVE_TENSORS}")
    size, chunks = native_stream(reg, version.manifest)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={
        "Content-Length": str(size), "X-Repo-Commit": commit_id(version),
        "Content-Disposition": f"attachment; filename={NATIVE_TENSORS}"})


def _heading(version: VersionInfo, latest: bool) -> str:
    namespace, _, short = version.name.partition("/")
    mark = " <span class=tag>latest</span>" if latest else ""
    return (f"<a href=\"{attr(repo_href(version.name))}\">{escape(namespace)}/"
            f"{escape(short)}</a> <span class=muted>@{version.number}</span> "
            f"{tags_html(version.tags)}{mark}")


def _related(reg: Registry, version: VersionInfo, log: list[VersionInfo]) -> str:
    """Links: every version, the previous one and a diff with it, diffs with each parent."""
    links = [f"<a href=\"{attr(repo_href(version.name))}\">all {len(log)} versions</a>"]
    older = [v for v in log if v.number < version.number and not v.deleted]
    previous = older[0] if older else None
    if previous is not None:
        kind = "previous, its parent" if previous.digest in version.parents else "previous"
        links.append(f"{kind}: {version_link(previous)} "
                     f"(<a href=\"{attr(diff_href(previous.ref, version.ref))}\">diff</a>)")
    for digest in version.parents:
        parent = reg.find(digest)
        if parent is not None and not parent.deleted and \
                (previous is None or parent.digest != previous.digest):
            links.append(f"parent: {version_link(parent)} "
                         f"(<a href=\"{attr(diff_href(parent.ref, version.ref))}\">diff</a>)")
    return " · ".join(links)


def version_page(request: Request, reg: Registry, repo: str, version: VersionInfo) -> Response:
    log = reg.log(repo)
    live = [v for v in log if not v.deleted]
    latest = bool(live) and live[0].digest == version.digest
    try:
        files, problem = files_of(request, reg, version), None
    except AdapterHubError as exc:  # a manifest no installed method can read: still shown
        files, problem = {}, exc.message
    endpoint = str(request.base_url).rstrip("/")
    when = f"{version.created_at:%Y-%m-%d %H:%M} UTC"
    meta = (f"<div class=meta>{short_digest(version.digest)} · commit "
            f"<code>{commit_id(version)[:12]}</code> · {escape(when)}"
            f"{' · by ' + escape(version.author) if version.author else ''}"
            f"{'<br>' + escape(version.message) if version.message else ''}"
            f"<br>{_related(reg, version, log)}</div>")
    card = model_card(version, files)
    card_section = (f"<section class=card id=card>{card_html(card)}</section>" if card else
                    "<p class=muted>This version has no model card.</p>")
    plots = metrics_html(with_manifests(reg, log), current=version.number)
    left = (f"<h2>Model card</h2>{card_section}"
            f"<h2>Lineage</h2>{lineage_html(reg, version)}"
            f"<h2>Metrics over versions</h2>{plots}"
            f"<h2>Tensors</h2>{tensors_html(version.manifest)}")
    right = (f"<h2>Use this adapter</h2>"
             f"{snippets_html(version, endpoint, 'adapter_config.json' in files)}"
             f"<h2>Details</h2>{details_html(version, stored_size(reg, version.manifest))}"
             f"<h2>Metrics</h2>{metrics_table(version.manifest)}"
             f"<h2>Labels</h2>{labels_html(version.manifest.labels)}"
             f"<h2>Files</h2>{files_html(version, files, problem)}")
    body = f"{meta}<div class=grid><div>{left}</div><div>{right}</div></div>"
    return page(version.ref, body, heading=_heading(version, latest))

