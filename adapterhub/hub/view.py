"""The HTML view: repositories, then one repository's versions, tags, lineage, sizes and
metrics over versions (a version's own page, diffs and search are in
:mod:`adapterhub.hub.pages`).

Server-rendered, no JavaScript; every value from the registry goes through
:func:`html.escape`. Reading it needs read access like the API (``--auth read-public`` opens
it to anyone).
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from adapterhub.contracts.progress import human_size
from adapterhub.hub.auth import registry
from adapterhub.hub.hf_read import commit_id, repository
from adapterhub.hub.pages import layout
from adapterhub.hub.pages.compare import compare_form
from adapterhub.hub.pages.plot import metrics_html, with_manifests
from adapterhub.registry import Registry
from registry_db import VersionInfo

router = APIRouter()


def page(title: str, body: str) -> HTMLResponse:
    return layout.page(title, body)


def link(version: VersionInfo) -> str:
    return layout.version_link(version)


def tags_html(tags: Iterable[str]) -> str:
    return "".join(f"<span class=tag>{escape(t)}</span>" for t in tags)


@router.get("/", response_class=HTMLResponse)
@layout.html_errors
def index(request: Request, reg: Registry = Depends(registry)) -> HTMLResponse:
    latest, counts = {}, {}
    for v in reg.list():
        counts[v.name] = counts.get(v.name, 0) + 1
        latest.setdefault(v.name, v)
    rows = []
    for name in reg.repositories():
        v = latest.get(name)
        link = f"<a href='/ui/{quote(name)}'>{escape(name)}</a>"
        if v is None:
            rows.append(f"<tr><td>{link}</td><td>0</td><td colspan=5 class=muted>no versions"
                        f"</td></tr>")
            continue
        rows.append(f"<tr><td>{link}</td><td>{counts[name]}</td><td>{layout.version_link(v)} "
                    f"{tags_html(v.tags)}</td><td>{escape(v.method)}</td>"
                    f"<td>{escape(v.base_name or '-')}</td><td class=nw>{human_size(v.size)}</td>"
                    f"<td class=nw>{v.created_at:%Y-%m-%d %H:%M}</td></tr>")
    table = ("<table><tr><th>Repository</th><th>Versions</th><th>Latest</th><th>Method</th>"
             "<th>Base model</th><th>Size</th><th>Updated</th></tr>" + "".join(rows)
             + "</table>") if rows else "<p class=muted>No repositories yet.</p>"
    return page("repositories", layout.search_form() + table)


@router.get("/ui/{namespace}/{name}", response_class=HTMLResponse)
@layout.html_errors
def repository_page(request: Request, namespace: str, name: str,
                    reg: Registry = Depends(registry)) -> HTMLResponse:
    repo = repository(reg, namespace, name)
    versions = reg.log(repo)
    rows = []
    for v in versions:
        parents = []
        for digest in v.parents:
            parent = reg.find(digest)
            parents.append(link(parent) if parent is not None
                           else f"<code>{escape(digest[:19])}…</code>")
        children = reg.service.children(v.digest, caller=reg.caller)
        css = " class=deleted" if v.deleted else ""
        rows.append(
            f"<tr{css}><td>{link(v)}</td><td>{tags_html(v.tags)}</td>"
            f"<td><code title='{escape(v.digest)}'>{escape(v.digest[:19])}…</code><br>"
            f"<span class=muted>commit {commit_id(v)[:12]}</span></td>"
            f"<td>{escape(v.method)}</td><td class=nw>{human_size(v.size)}</td>"
            f"<td class=nw>{v.created_at:%Y-%m-%d %H:%M}</td><td>{escape(v.author or '-')}</td>"
            f"<td>{escape(v.message or '')}</td><td>{', '.join(parents) or '-'}</td>"
            f"<td>{', '.join(link(c) for c in children) or '-'}</td></tr>")
    table = ("<table><tr><th>Version</th><th>Tags</th><th>Digest</th><th>Method</th>"
             "<th>Size</th><th>Created</th><th>Author</th><th>Message</th><th>Parents</th>"
             "<th>Children</th></tr>" + "".join(rows) + "</table>") if rows else \
        "<p class=muted>No versions yet.</p>"
    endpoint = str(request.base_url).rstrip("/")
    hint = (f"<p class=muted>Hugging Face clients: <code>HF_ENDPOINT={escape(endpoint)}"
            f"</code>, repository <code>{escape(repo)}</code>, revision <code>v&lt;N&gt;</code>,"
            f" a tag or <code>main</code>.</p>")
    live = [v for v in versions if not v.deleted]
    compare = (f"<h2>Compare</h2>{compare_form(live[1].ref, live[0].ref)}"
               if len(live) > 1 else "")
    plots = f"<h2>Metrics over versions</h2>{metrics_html(with_manifests(reg, versions))}"
    return page(repo, table + hint + plots + compare)
