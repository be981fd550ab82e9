"""Search, ``/search?q=…``: live versions by repository name, method, base model (name or
fingerprint), tag and label.

Every word of the query must match (case-insensitive, anywhere in one of those fields); a
word ``KEY=VALUE`` must be a label exactly (an index lookup, as ``adapterhub list --label``).
The candidates come from the caller's view of the registry, so a search never shows a
repository the caller may not read. API clients get JSON: ``{"query", "versions",
"repositories"}``.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapterhub.contracts.progress import human_size
from adapterhub.hub.auth import registry
from adapterhub.hub.bodies import json_response
from adapterhub.hub.pages.card import CARD_LABEL
from adapterhub.hub.pages.layout import (attr, html_errors, page, repo_href, tags_html,
                                         version_link, wants_html)
from adapterhub.registry import Registry
from registry_db import VersionInfo

router = APIRouter()
MAX_RESULTS = 200
MAX_WORDS = 12


def parse_query(q: str) -> tuple[list[str], dict[str, str]]:
    """``(words, labels)``: lowercased words to find, and ``KEY=VALUE`` label filters."""
    words, labels = [], {}
    for word in q.split()[:MAX_WORDS]:
        key, sep, value = word.partition("=")
        if sep and key and value:
            labels[key] = value
        else:
            words.append(word.lower())
    return words, labels


def fields(v: VersionInfo) -> list[tuple[str, str]]:
    """``(what, text)`` a version can be found by."""
    out = [("name", v.name), ("method", v.method)]
    if v.base_name:
        out.append(("base model", v.base_name))
    if v.base_fingerprint:
        out.append(("base fingerprint", v.base_fingerprint))
    out += [("tag", t) for t in v.tags]
    out += [("label", f"{k}={value}") for k, value in sorted(v.labels.items())
            if k != CARD_LABEL]
    return out


def matches(v: VersionInfo, words: list[str]) -> list[tuple[str, str]] | None:
    """The fields that matched each word, or None when one word matches nothing."""
    found: list[tuple[str, str]] = []
    candidates = fields(v)
    for word in words:
        hit = next(((what, text) for what, text in candidates if word in text.lower()), None)
        if hit is None:
            return None
        if hit not in found:
            found.append(hit)
    return found


def search_versions(reg: Registry, q: str) -> tuple[list[tuple[VersionInfo, list]], list[str]]:
    """Matching live versions (newest first per repository) with what matched, and
    matching repositories that have no live version."""
    words, labels = parse_query(q)
    if not words and not labels:
        return [], []
    listed = reg.list(labels=labels or None)
    hits = []
    for v in listed:
        found = matches(v, words)
        if found is not None:
            hits.append((v, found + [("label", f"{k}={val}") for k, val in labels.items()]))
    empty: list[str] = []
    if words and not labels:
        live = {v.name for v in listed}
        empty = [name for name in reg.repositories()
                 if name not in live and all(w in name.lower() for w in words)]
    return hits, empty

def results_html(hits: list[tuple[VersionInfo, list]], empty: list[str], total: int) -> str:
    rows = []
    for v, found in hits[:MAX_RESULTS]:
        why = ", ".join(f"{escape(what)} <code>{escape(text[:80])}</code>" for what, text in found)
        rows.append(f"<tr><td>{version_link(v)} {tags_html(v.tags)}</td>"
                    f"<td>{escape(v.method)}</td><td>{escape(v.base_name or '—')}</td>"
                    f"<td class='num nw'>{human_size(v.size)}</td>"
                    f"<td class=nw>{v.created_at:%Y-%m-%d %H:%M}</td><td>{why}</td></tr>")
    for name in empty:
        rows.append(f"<tr><td><a href=\"{attr(repo_href(name))}\">{escape(name)}</a></td>"
                    f"<td colspan=5 class=muted>no versions yet</td></tr>")
    if not rows:
        return "<p class=muted>Nothing found.</p>"
    more = (f"<p class=muted>Showing the first {MAX_RESULTS} of {total}.</p>"
            if total > MAX_RESULTS else "")
    return (f"<p class=muted>{total} version{'s' if total != 1 else ''} found</p>"
            f"<table class=results><tr><th>Version</th><th>Method</th><th>Base model</th>"
            f"<th class=num>Size</th><th>Created</th><th>Matched</th></tr>{''.join(rows)}"
            f"</table>{more}")


@router.get("/search")
@html_errors
def search(request: Request, q: str = Query("", max_length=300),
           reg: Registry = Depends(registry)) -> Response:
    """Search names, methods, base models, tags and labels of the versions the caller may
    read."""
    hits, empty = search_versions(reg, q)
    total = len(hits)
    if not wants_html(request):
        return json_response({"query": q,
                              "versions": [v.to_dict() for v, _ in hits[:MAX_RESULTS]],
                              "repositories": empty})
    hint = ("<p class=muted>Words match names, methods, base models (name or fingerprint), "
            "tags and labels; <code>KEY=VALUE</code> matches a label exactly, e.g. "
            "<code>git.branch=main</code>.</p>")
    body = hint + (results_html(hits, empty, total) if q.strip() else "")
    return page(f"Search: {q}" if q.strip() else "Search", body, query=q)
