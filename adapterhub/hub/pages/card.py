"""Model cards: where a version's card is found, its YAML metadata, and safe Markdown.

A card is Markdown with optional YAML front matter, as on the Hugging Face Hub
(``README.md``). :func:`model_card` is the one place that knows where cards live. Rendering
never passes HTML through: raw HTML in the card is shown as text, and links and images may
only point to ``http``, ``https``, ``mailto`` or relative addresses (``javascript:``,
``data:``, ``vbscript:`` … are refused and shown as text). The front matter is parsed with
YAML's safe loader, without anchors and aliases (so a small card cannot expand into a huge
one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from html import escape
from typing import TYPE_CHECKING, Any

from adapterhub.hub.model_card import front_matter
from adapterhub.hub.pages.layout import kv_table, value_text

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

    from adapterhub.hub.render import RenderedFile
    from registry_db import VersionInfo

#: the card's file in a version's repository (as Hugging Face clients see it)
CARD_FILE = "README.md"
#: the manifest label that holds a card while the hub keeps no uploaded files
CARD_LABEL = "card"
#: larger cards are not rendered
MAX_CARD_BYTES = 1 << 20
SAFE_SCHEMES = ("http", "https", "mailto")
_SCHEME = re.compile(r"^([a-z][a-z0-9+.\-]*):")
_INVISIBLE = re.compile(r"[\x00-\x20\x7f]+")


def model_card(version: VersionInfo, files: Mapping[str, RenderedFile]) -> str | None:
    """The model card of ``version``, or None.

    ``README.md`` among the version's repository files ``files`` (where the hub keeps files
    uploaded byte for byte) comes first; otherwise the manifest label ``card``.
    """
    found = files.get(CARD_FILE)
    if found is not None and found.size <= MAX_CARD_BYTES:
        return found.content().decode("utf-8", "replace")
    labels = version.manifest.labels if version.manifest is not None else version.labels
    card = labels.get(CARD_LABEL)
    return card if isinstance(card, str) and card.strip() else None


def safe_url(url: str) -> bool:
    """Whether a link or image address may appear in a page: ``http``, ``https``,
    ``mailto``, or relative. Control characters and spaces a browser would skip are removed
    before the scheme is read, so ``java\\tscript:`` is caught too."""
    compact = _INVISIBLE.sub("", url).lower()
    match = _SCHEME.match(compact)
    return match is None or match.group(1) in SAFE_SCHEMES


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").enable("strikethrough")
    md.validateLink = safe_url  # type: ignore[method-assign]

    def link_open(renderer: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


def render_markdown(text: str) -> str:
    """Markdown as HTML with all raw HTML escaped and unsafe addresses refused."""
    return _markdown().render(text)


def card_html(text: str) -> str:
    """A card as HTML: its metadata as a table (if any), then the rendered Markdown."""
    if len(text.encode("utf-8", "replace")) > MAX_CARD_BYTES:
        return f"<p class=muted>The card is larger than {MAX_CARD_BYTES} bytes.</p>"
    metadata, error, body = front_matter(text)
    parts = []
    if metadata:
        rows = [(str(k), escape(_meta_text(v))) for k, v in metadata.items()]
        parts.append(f"<details class=card-meta open><summary>Metadata</summary>"
                     f"{kv_table(rows)}</details>")
    if error:
        parts.append(f"<p class=muted>{escape(error)}</p>")
    parts.append(f"<div class=markdown>{render_markdown(body)}</div>")
    return "".join(parts)


def _meta_text(value: Any) -> str:
    """Card metadata as a person reads it: a list of plain values joined by commas."""
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ", ".join(value_text(v) for v in value)
    return value_text(value)
