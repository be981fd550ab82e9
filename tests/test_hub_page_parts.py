"""The parts of the hub's pages that need no server: safe Markdown and YAML for model cards,
and the streamed native tensors file (byte for byte what the formats module writes)."""

from __future__ import annotations

import pytest
import torch

from adapterhub.hub.model_card import front_matter
from adapterhub.hub.pages.card import card_html, safe_url
from adapterhub.hub.pages.details import native_header
from adapterhub.io.formats.repo import native_files
from adapterhub.io.package import AdapterPackage
from adapterhub.io.safetensors import tensor_bytes


@pytest.mark.parametrize("url, ok", [
    ("https://example.com/x", True), ("http://a", True), ("mailto:a@b.c", True),
    ("/team/bot/v1", True), ("#usage", True), ("docs/page.md", True),
    ("javascript:alert(1)", False), ("JavaScript:alert(1)", False),
    (" javascript:alert(1)", False), ("java\tscript:alert(1)", False),
    ("java\nscript:alert(1)", False), ("\x01javascript:alert(1)", False),
    ("data:text/html,<script>", False), ("vbscript:msgbox", False), ("file:///etc", False),
])
def test_only_safe_addresses_are_links(url, ok):
    assert safe_url(url) is ok


def test_cards_render_markdown_and_show_raw_html_as_text():
    html = card_html("---\nlicense: mit\ntags: [a, b]\n---\n# Title <b>x</b>\n\n"
                     "| k | v |\n|---|---|\n| r | 4 |\n\n"
                     "[ok](https://example.com) [no](javascript:alert(1)) "
                     "![pic](https://example.com/p.png) ![bad](data:image/png;base64,AA)\n\n"
                     "<script>alert(1)</script> <img src=x onerror=alert(1)>\n")
    assert "<th>license</th><td>mit</td>" in html and "<td>a, b</td>" in html
    assert "<h1>Title &lt;b&gt;x&lt;/b&gt;</h1>" in html
    assert "<td>r</td>" in html and "<td>4</td>" in html
    assert '<a href="https://example.com" rel="nofollow noopener noreferrer">ok</a>' in html
    assert '<img src="https://example.com/p.png" alt="pic"' in html
    assert "[no](javascript:alert(1))" in html and "![bad](data:" in html  # text, not links
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_card_metadata_is_read_safely():
    laughs = "---\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a]\n" \
             "c: [*b, *b, *b, *b, *b, *b, *b]\n---\nbody"
    metadata, error, body = front_matter(laughs)
    assert metadata is None and "aliases are not allowed" in error and body == "body"
    metadata, error, _ = front_matter("---\n!!python/object/apply:os.system [echo]\n---\n")
    assert metadata is None and "not valid YAML" in error
    assert front_matter("---\n- a list\n---\nx")[1] == \
        "the metadata is not a mapping of keys to values"
    assert front_matter("no metadata") == (None, None, "no metadata")
    assert front_matter("---\nbase_model: tiny\n---\n# Hi\n")[0] == {"base_model": "tiny"}


def test_streamed_native_file_is_what_the_formats_write():
    gen = torch.Generator().manual_seed(0)
    tensors = {"m.lora_A": torch.randn(4, 16, generator=gen).to(torch.bfloat16),
               "m.lora_B": torch.randn(32, 4, generator=gen),
               "n.lora_A": torch.randn(4, 16, generator=gen).half(),
               "n.lora_B": torch.randn(32, 4, generator=gen).double()}
    package = AdapterPackage.build("lora", {"r": 4, "lora_alpha": 8}, tensors)
    manifest = package.manifest
    blobs = {e.digest: tensor_bytes(package.tensors[n]) for n, e in manifest.tensors.items()}
    head, order = native_header(manifest)
    streamed = head + b"".join(blobs[manifest.tensors[n].digest] for n in order)
    assert streamed == native_files(manifest, blobs)["adapter.safetensors"]
    assert order == ["n.lora_B", "m.lora_B", "m.lora_A", "n.lora_A"]  # widest dtypes first
