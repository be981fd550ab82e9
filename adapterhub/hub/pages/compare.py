"""The diff page, ``/diff?a=REF&b=REF``: what ``adapterhub diff A B`` shows, for people.

Metrics side by side with their change, the other settings that differ (configuration,
base model, recipe, labels, parents), and each tensor's change as a norm with a bar for its
relative size. API clients get the same JSON as ``adapterhub diff --json``. Both versions
are read through the caller's view: a ref the caller may not read is refused as by the API.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapterhub.errors import InvalidRequestError
from adapterhub.hub.auth import registry
from adapterhub.hub.bodies import json_response
from adapterhub.hub.pages.layout import (attr, html_errors, page, short_digest, value_text,
                                         version_link, wants_html)
from adapterhub.registry import Registry

router = APIRouter()
MAX_ROWS = 2000


def compare_form(a: str = "", b: str = "") -> str:
    return (f"<form class=inline action='/diff' method=get>"
            f"<label>from <input type=text name=a value=\"{attr(a)}\" size=28 "
            f"placeholder='team/bot@1'></label>"
            f"<label>to <input type=text name=b value=\"{attr(b)}\" size=28 "
            f"placeholder='team/bot@2'></label><button type=submit>Compare</button></form>")


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _cell(value: Any) -> str:
    if value is None:
        return "<span class=muted>—</span>"
    text = value_text(value)
    if len(text) <= 160:
        return escape(text)
    return (f"<details><summary>{escape(text[:80])}… ({len(text):,} characters)</summary>"
            f"<pre class=snippet>{escape(text)}</pre></details>")


def metrics_rows(settings: dict[str, list[Any]]) -> str:
    rows = []
    for key, (va, vb) in settings.items():
        if not key.startswith("metrics."):
            continue
        na, nb = _number(va), _number(vb)
        change = ""
        if na is not None and nb is not None:
            delta = nb - na
            color = "#2e7d32" if delta > 0 else "#c62828" if delta < 0 else "inherit"
            change = f"<span style='color:{color}'>{delta:+.4g}</span>"
        rows.append(f"<tr><td>{escape(key[len('metrics.'):])}</td><td class=num>{_cell(va)}"
                    f"</td><td class=num>{_cell(vb)}</td><td class=num>{change}</td></tr>")
    if not rows:
        return "<p class=muted>No metric differs.</p>"
    return ("<table class=diff-metrics><tr><th>Metric</th><th class=num>from</th>"
            "<th class=num>to</th><th class=num>change</th></tr>" + "".join(rows) + "</table>")


def settings_rows(settings: dict[str, list[Any]]) -> str:
    rows = [f"<tr><td><code>{escape(key)}</code></td><td>{_cell(va)}</td><td>{_cell(vb)}</td></tr>"
            for key, (va, vb) in settings.items() if not key.startswith("metrics.")]
    if not rows:
        return "<p class=muted>The configuration, base model and labels are the same.</p>"
    return ("<table class=diff-settings><tr><th>Setting</th><th>from</th><th>to</th></tr>"
            + "".join(rows) + "</table>")


def tensor_rows(tensors: list[dict[str, Any]]) -> str:
    changed = [t for t in tensors if t["status"] != "same"]
    summary = (f"<p class=summary><strong>{len(changed)} of {len(tensors)} tensors differ"
               f"</strong></p>")
    rows = []
    for t in changed[:MAX_ROWS]:
        norm = f"{t['change_norm']:.4g}" if "change_norm" in t else "—"
        rel = t.get("relative")
        bar = ""
        if rel is not None:
            bar = (f" <span class=bar style='width:{min(rel, 2.0) * 60:.0f}px' "
                   f"title='{rel:.3g}'></span>")
        status = t["status"]
        if status == "reshaped":
            status += " " + " → ".join("×".join(map(str, s)) for s in t["shape"])
        rows.append(f"<tr><td><code>{escape(t['name'])}</code></td><td>{escape(status)}</td>"
                    f"<td class=num>{norm}</td><td class=nw>"
                    f"{'—' if rel is None else f'{rel:.3g}'}{bar}</td></tr>")
    table = ("<table class=diff-tensors><tr><th>Tensor</th><th>Status</th>"
             "<th class=num>‖b − a‖</th><th>relative</th></tr>" + "".join(rows) + "</table>"
             ) if rows else ""
    return summary + table


@router.get("/diff")
@html_errors
def diff_page(request: Request, a: str = Query("", max_length=300),
              b: str = Query("", max_length=300),
              reg: Registry = Depends(registry)) -> Response:
    """Two versions compared (``a`` → ``b``, any refs the caller may read)."""
    if not a or not b:
        if not wants_html(request):
            raise InvalidRequestError("give two refs: /diff?a=REF&b=REF")
        return page("Compare versions", compare_form(a, b), query="")
    va, vb = reg.resolve(a), reg.resolve(b)
    result = reg.diff(va.ref, vb.ref)
    if not wants_html(request):
        return json_response(result)
    heading = f"{version_link(va)} → {version_link(vb)}"
    body = (f"<div class=meta>{short_digest(va.digest)} → {short_digest(vb.digest)}</div>"
            f"{compare_form(a, b)}"
            f"<h2>Metrics</h2>{metrics_rows(result['settings'])}"
            f"<h2>Settings</h2>{settings_rows(result['settings'])}"
            f"<h2>Tensors</h2>{tensor_rows(result['tensors'])}")
    return page(f"{va.ref} → {vb.ref}", body, heading=heading)
