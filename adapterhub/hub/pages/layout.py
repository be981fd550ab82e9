"""The frame every page shares: the HTML shell, the search box, links to versions, error
pages for browsers, and content negotiation.

Everything shown goes through :func:`html.escape` (or :func:`attr` inside attributes); no
page carries JavaScript. A request whose ``Accept`` names ``text/html`` is a browser's; any
other (``*/*``, ``application/json``, Hugging Face clients) gets JSON on the same path.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable
from html import escape
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse

from adapterhub.errors import AdapterHubError
from adapterhub.hub.errors import header_safe
from registry_db import VersionInfo

STYLE = """
:root{--fg:#1d1d1f;--muted:#6b6b70;--line:#e2e2e6;--accent:#0b5cad;--soft:#f5f6f8}
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0;color:var(--fg);line-height:1.45}
header.top{display:flex;gap:1.5rem;align-items:center;padding:.7rem 2rem;
border-bottom:1px solid var(--line);background:var(--soft)}
header.top .brand{font-weight:600;color:inherit;text-decoration:none}
header.top form{margin-left:auto}
main{padding:1.2rem 2rem 3rem;max-width:1200px}
h1{font-size:1.4rem;margin:.2rem 0 .6rem}h1 a{color:inherit;text-decoration:none}
h2{font-size:1.1rem;margin:1.6rem 0 .5rem;padding-bottom:.2rem;
border-bottom:1px solid var(--line)}
h3{font-size:1rem;margin:1rem 0 .4rem}
a{color:var(--accent)}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--soft);font-weight:600}
table.kv th{width:30%;background:none;font-weight:500;color:var(--muted)}
td code{overflow-wrap:anywhere}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85rem}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:.6rem .8rem;
overflow-x:auto;white-space:pre}
pre.snippet{white-space:pre-wrap;overflow-wrap:anywhere}
.tag{background:#e4efff;border-radius:4px;padding:0 .3rem;margin-right:.2rem;font-size:.85rem}
.muted{color:var(--muted)}.nw{white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums}
.deleted{color:#999;text-decoration:line-through}
.grid{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:2rem}
.card{border:1px solid var(--line);border-radius:8px;padding:.2rem 1.2rem 1rem}
.card table{width:auto}.card img{max-width:100%}
.meta{font-size:.85rem;margin-bottom:.8rem}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0}.plots figcaption{font-weight:600;font-size:.9rem}
.bar{display:inline-block;height:.6rem;background:#d9822b;border-radius:2px;vertical-align:middle}
svg text{font-family:system-ui,sans-serif}
form.inline{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap}
input[type=search],input[type=text],select{padding:.3rem .4rem;font-size:.9rem}
.error{border-left:4px solid #c62828;padding:.4rem 1rem;background:#fff4f4}
"""

T = TypeVar("T")


def attr(value: object) -> str:
    """``value`` escaped for a quoted attribute (quotes included)."""
    return escape(str(value), quote=True)


def wants_html(request: Request) -> bool:
    """Whether the client asked for a page (browsers send ``Accept: text/html,…``)."""
    return "text/html" in request.headers.get("accept", "").lower()


def search_form(query: str = "") -> str:
    return (f"<form class=inline action='/search' method=get role=search>"
            f"<input type=search name=q value=\"{attr(query)}\" size=32 "
            f"placeholder='names, methods, base models, labels' aria-label=Search>"
            f"<button type=submit>Search</button></form>")


def page(title: str, body: str, *, heading: str | None = None, query: str = "",
         status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    """A whole page: the top bar (home link and search box), an ``<h1>`` and ``body``.

    ``heading`` is HTML (already escaped) for the ``<h1>``; default: ``title`` escaped."""
    h1 = heading if heading is not None else escape(title)
    html = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{escape(title)} · adapterhub</title><style>{STYLE}</style></head><body>"
            f"<header class=top><a class=brand href='/'>adapterhub</a>"
            f"<a href='/'>Repositories</a>{search_form(query)}</header>"
            f"<main><h1>{h1}</h1>{body}</main></body></html>")
    return HTMLResponse(html, status_code=status, headers=headers)


def error_page(exc: AdapterHubError) -> HTMLResponse:
    """The error a JSON client would get, as a page: same status, same error headers."""
    headers = {"X-Error-Code": exc.code, "X-Error-Message": header_safe(exc.message),
               **{k: header_safe(v) for k, v in exc.headers.items()}}
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="adapterhub"')
    hint = f"<p class=muted>{escape(exc.hint)}</p>" if exc.hint else ""
    body = f"<div class=error><p>{escape(exc.message)}</p>{hint}</div>"
    return page(f"{exc.status} {exc.code}", body, status=exc.status, headers=headers)


def html_errors(endpoint: Callable[..., T]) -> Callable[..., T]:
    """Decorate a route (with a ``request`` parameter) so that browsers get an error page
    with the same status as the JSON error API clients get."""

    @functools.wraps(endpoint)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return endpoint(*args, **kwargs)
        except AdapterHubError as exc:
            request = kwargs.get("request")
            if isinstance(request, Request) and wants_html(request):
                return error_page(exc)
            raise

    return wrapper


def version_href(version: VersionInfo) -> str:
    """The page of one version: ``/ns/name/vN``."""
    return f"/{quote(version.name)}/v{version.number}"


def repo_href(name: str) -> str:
    """The page of one repository's versions."""
    return f"/ui/{quote(name)}"


def diff_href(a: str, b: str) -> str:
    return "/diff?" + urlencode({"a": a, "b": b})


def version_link(version: VersionInfo) -> str:
    if version.deleted:
        return f"<span class=deleted>{escape(version.ref)}</span>"
    return f"<a href=\"{attr(version_href(version))}\">{escape(version.ref)}</a>"


def tags_html(tags: Iterable[str]) -> str:
    return "".join(f"<span class=tag>{escape(t)}</span>" for t in tags)


def short_digest(digest: str, n: int = 12) -> str:
    """``sha256:5f0c1a2b3c4d…``: enough to recognise, with the whole one as a tooltip."""
    return (f"<code title=\"{attr(digest)}\">{escape(digest[:7 + n])}…</code>")


def value_text(value: object) -> str:
    """A JSON value as a person reads it: numbers with up to 6 significant digits, strings
    as they are, anything else as compact JSON (escaped by the caller)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), default=str)


def kv_table(rows: Iterable[tuple[str, str]], *, css: str = "kv") -> str:
    """A two-column table; keys are escaped here, values must be HTML already."""
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table class={css}>{body}</table>" if body else "<p class=muted>none</p>"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys (``{"eval": {"acc": 1}}`` → ``{"eval.acc": 1}``)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value} if prefix else {}
