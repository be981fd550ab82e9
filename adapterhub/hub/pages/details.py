"""The sections of a version page: details, metrics, labels, tensors, files and snippets.

Each function takes what the route already read through the caller's view of the registry
and returns escaped HTML.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import quote

from adapterhub.contracts.progress import human_size
from adapterhub.hub.pages.card import CARD_LABEL
from adapterhub.hub.pages.layout import attr, flatten, kv_table, value_text
from adapterhub.io.safetensors import encode_header
from registry_db.manifest import DTYPE_SIZES

if TYPE_CHECKING:
    from adapterhub.hub.render import RenderedFile
    from adapterhub.registry import Registry
    from registry_db import Manifest, VersionInfo

#: tensors listed at most on a page
MAX_TENSOR_ROWS = 2000
#: distinct blobs whose stored size is looked up at most
MAX_STORED_LOOKUPS = 2000
NATIVE_TENSORS = "adapter.safetensors"
_RUN_URL = re.compile(r"^(https?://[^\s]+?)/(?:actions/runs|-/pipelines|-/jobs)/\d+/?$")


def _code(text: object) -> str:
    return f"<code>{escape(str(text))}</code>"


def stored_size(reg: Registry, manifest: Manifest) -> int | None:
    """Bytes the registry stores for the version's distinct blobs (compressed), or None
    when the version has too many blobs to look up on a page."""
    digests = {e.digest for e in manifest.tensors.values()}
    if len(digests) > MAX_STORED_LOOKUPS:
        return None
    return sum(reg.service.blobs.info(d, caller=reg.caller).stored_size for d in digests)


def details_html(version: VersionInfo, stored: int | None) -> str:
    """Method, config, quantization, base model, sizes."""
    m = version.manifest
    method = (f"{_code(m.method_name)} <span class=muted>format "
              f"{escape(str(m.method.get('version')))}</span>")
    config = [(k, escape(value_text(v))) for k, v in sorted(m.method.get("config", {}).items())]
    base = m.base_model
    rows = [("method", method),
            ("base model", escape(str(base.get("name") or "—"))),
            ("base revision", escape(str(base.get("revision") or "—"))),
            ("base fingerprint", _code(base["fingerprint"]) if base.get("fingerprint")
             else "<span class=muted>none recorded</span>"),
            ("adapted modules", str(len(base.get("modules") or {}))),
            ("size", f"{human_size(version.size)} <span class=muted>({version.size:,} bytes)"
                     f"</span>"),
            ("stored size", "—" if stored is None else
             f"{human_size(stored)} <span class=muted>({stored:,} bytes, compressed, shared "
             f"blobs counted once)</span>")]
    if m.quantization:
        rows.insert(2, ("quantized base", escape(value_text(m.quantization))))
    if m.recipe:
        rows.insert(1, ("merge recipe", escape(value_text(m.recipe))))
    return (f"{kv_table(rows)}<h3>Configuration</h3>{kv_table(config)}")


def metrics_table(manifest: Manifest) -> str:
    rows = [(k, f"<span class=num>{escape(value_text(v))}</span>")
            for k, v in sorted(flatten(manifest.metrics).items())]
    return kv_table(rows)


def _link_url(url: str) -> str | None:
    """``url`` if it is an http(s) address a page may link to."""
    return url if re.match(r"^https?://[^\s\"'<>]+$", url) else None


def labels_html(labels: Mapping[str, object]) -> str:
    """Labels (but the card); CI provenance as links: run URLs, and the commit when the
    run URL shows where the repository lives (GitHub Actions, GitLab CI)."""
    shown = {k: (v if isinstance(v, str) else value_text(v)) for k, v in labels.items()
             if k != CARD_LABEL}
    run = _RUN_URL.match(shown.get("ci.run_url", "") or "")
    rows = []
    for key, text in sorted(shown.items()):
        url = _link_url(text)
        if key == "git.sha" and run is not None and re.fullmatch(r"[0-9a-f]{7,64}", text):
            sep = "/-/commit/" if "/-/" in shown["ci.run_url"] else "/commit/"
            url = f"{run.group(1)}{sep}{text}"
            cell = f"<a href=\"{attr(url)}\" rel=nofollow><code>{escape(text)}</code></a>"
        elif url is not None:
            cell = f"<a href=\"{attr(url)}\" rel=nofollow>{escape(text)}</a>"
        else:
            cell = escape(text)
        rows.append((key, cell))
    return kv_table(rows)


def tensors_html(manifest: Manifest) -> str:
    names = sorted(manifest.tensors)
    rows = []
    for name in names[:MAX_TENSOR_ROWS]:
        e = manifest.tensors[name]
        shape = " × ".join(str(d) for d in e.shape) or "scalar"
        rows.append(f"<tr><td><code>{escape(name)}</code></td><td class=nw>{escape(shape)}</td>"
                    f"<td>{escape(e.dtype)}</td><td class='num nw' title='{e.nbytes:,} bytes'>"
                    f"{human_size(e.nbytes)}</td></tr>")
    more = (f"<p class=muted>{len(names) - MAX_TENSOR_ROWS:,} more tensors not listed.</p>"
            if len(names) > MAX_TENSOR_ROWS else "")
    total = sum(e.nbytes for e in manifest.tensors.values())
    return (f"<p class=muted>{len(names):,} tensors, {human_size(total)}</p>"
            f"<table class=tensors><tr><th>Tensor</th><th>Shape</th><th>Dtype</th>"
            f"<th class=num>Bytes</th></tr>{''.join(rows)}</table>{more}")


# -- files --------------------------------------------------------------------------------


def native_header(manifest: Manifest) -> tuple[bytes, list[str]]:
    """The head of the native ``adapter.safetensors`` (length, JSON header) and the order of
    the tensors' bytes after it: byte for byte what
    :func:`adapterhub.io.formats.repo.native_files` writes, so it can be streamed blob by
    blob."""
    tensors = manifest.tensors
    order = sorted(tensors, key=lambda n: (-DTYPE_SIZES[tensors[n].dtype], n))
    entries: dict[str, dict[str, object]] = {}
    offset = 0
    for name in order:
        e = tensors[name]
        entries[name] = {"dtype": e.dtype, "shape": list(e.shape),
                         "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    metadata = {"format": "pt", "adapterhub_version": manifest.digest}
    return encode_header(entries, metadata, sort_keys=True), order


def native_stream(reg: Registry, manifest: Manifest) -> tuple[int, Iterator[bytes]]:
    """``(size, chunks)`` of the native ``adapter.safetensors``, one blob in memory at a
    time (each verified against its digest as it is read)."""
    head, order = native_header(manifest)

    def chunks() -> Iterator[bytes]:
        yield head
        for name in order:
            yield bytes(reg.read_blob(manifest.tensors[name].digest))

    return len(head) + manifest.nbytes, chunks()


def files_html(version: VersionInfo, files: Mapping[str, RenderedFile],
               problem: str | None = None) -> str:
    """Download links: the files Hugging Face clients get (the PEFT layout when PEFT can
    express the method, else the native one) and, beside a PEFT layout, the native files.
    ``problem``: why the files could not be rendered."""
    if problem is not None:
        return f"<p class=muted>The files cannot be rendered: {escape(problem)}</p>"
    repo = quote(version.name)
    rev = f"v{version.number}"

    def row(path: str, href: str, size: int) -> str:
        return (f"<tr><td><a href=\"{attr(href)}\" download>{escape(path)}</a></td>"
                f"<td class='num nw'>{human_size(size)}</td></tr>")

    peft = "adapter_config.json" in files
    hf_rows = "".join(row(p, f"/{repo}/resolve/{rev}/{quote(p)}", f.size)
                      for p, f in files.items())
    title = "PEFT layout (adapter.json: the manifest)" if peft else "Native layout"
    out = f"<h3>{title}</h3><table class=files>{hf_rows}</table>"
    if peft and "adapter.json" in files:
        head, _ = native_header(version.manifest)
        native = (row("adapter.json", f"/{repo}/resolve/{rev}/adapter.json",
                      files["adapter.json"].size)
                  + row(NATIVE_TENSORS, f"/{repo}/native/{rev}/{NATIVE_TENSORS}",
                        len(head) + version.manifest.nbytes))
        out += f"<h3>Native layout</h3><table class=files>{native}</table>"
    return out


# -- snippets -----------------------------------------------------------------------------


def snippets_html(version: VersionInfo, endpoint: str, peft: bool) -> str:
    """Copy-paste commands: pull, load with PEFT through ``HF_ENDPOINT``, apply."""
    repo, rev = version.name, f"v{version.number}"
    pinned = f"{repo}@{version.digest[:19]}"
    base = version.base_name or "BASE"
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", base.rsplit("/", 1)[-1]) or "base"
    pull = (f"adapterhub pull {version.ref} --from {endpoint} \\\n"
            f"    --out {version.name.rsplit('/', 1)[-1]}-{rev}/ --format "
            f"{'peft' if peft else 'native'}")
    env = (f"export HF_ENDPOINT={endpoint}\n"
           f"export HF_TOKEN=ahub_…   # a token that may read {repo}")
    if peft:
        load = (f"{env}\npython - <<'EOF'\nfrom peft import PeftModel\n"
                f"# base_model: {base}, loaded with transformers\n"
                f"model = PeftModel.from_pretrained(base_model, {json.dumps(repo)}, "
                f"revision={json.dumps(rev)})\nEOF")
    else:
        load = (f"{env}\npython - <<'EOF'\nfrom huggingface_hub import snapshot_download\n"
                f"path = snapshot_download({json.dumps(repo)}, revision={json.dumps(rev)})"
                f"\nEOF")
    apply = (f"adapterhub pull {version.ref} --from {endpoint}\n"
             f"adapterhub apply ./{folder} {pinned} --out ./{folder}-merged")
    blocks = [("Pull", pull), ("Load with PEFT" if peft else "Download with huggingface_hub",
                                load), ("Fold into the base model (a deployment build)", apply)]
    if version.manifest is not None and version.manifest.recipe:
        blocks.append(("Rebuild from the recipe", f"adapterhub pull {version.ref} --from "
                                                  f"{endpoint}\nadapterhub rebuild {pinned}"))
    return "".join(f"<h3>{escape(t)}</h3><pre class=snippet><code>{escape(c)}</code></pre>"
                   for t, c in blocks)
