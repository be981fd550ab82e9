"""Model cards: the YAML metadata of ``README.md``, validated as the Hugging Face Hub does.

The Hub refuses a card whose metadata block is not a mapping, uses YAML anchors or aliases,
names a license outside its list, gives ``tags``/``language``/``datasets``/``metrics``/
``base_model`` as anything but a string or a list of strings, or has a ``model-index`` that
is not a list of ``{name, results: [{task: {type}, dataset: {type, name}, metrics: [{type,
value}]}]}``. :func:`validate_card` raises :class:`InvalidModelCardError` naming the field.
:func:`front_matter` is also the parser the hub's pages use (:mod:`adapterhub.hub.pages.card`).
"""

from __future__ import annotations

import re
from typing import Any

from adapterhub.errors import InvalidModelCardError

CARD_FILE = "README.md"
MAX_FRONT_MATTER = 64 * 1024
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S)
#: the Hub's license identifiers (https://huggingface.co/docs/hub/repositories-licenses)
LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause
bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0
cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1
eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research
lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openmdw-1.0 openrail++ osl-3.0
postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
fair-noncommercial-research-license
llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())
STRING_OR_LIST = ("tags", "language", "datasets", "metrics", "base_model")


def front_matter(text: str) -> tuple[dict[str, Any] | None, str | None, str]:
    """``(metadata, error, body)``: the YAML block at the top of a card (None if there is
    none or it is not a mapping), why it could not be read, and the Markdown after it."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return None, None, text
    body = text[match.end():]
    raw = match.group(1)
    if len(raw) > MAX_FRONT_MATTER:
        return None, f"the metadata block is larger than {MAX_FRONT_MATTER} bytes", body
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("anchors and aliases are not allowed")
            return super().compose_node(parent, index)

    try:
        data = yaml.load(raw, Loader=Loader)  # noqa: S506 (a safe loader, aliases refused)
    except yaml.YAMLError as exc:
        return None, f"the metadata is not valid YAML: {str(exc)[:200]}", body
    if data is None:
        return None, None, body
    if not isinstance(data, dict):
        return None, "the metadata is not a mapping of keys to values", body
    return data, None, body


def _fail(field: str, why: str) -> InvalidModelCardError:
    return InvalidModelCardError(f"README.md metadata: {field} {why}")


def _strings(field: str, value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(field, "must be a string or a list of strings")


def _model_index(value: Any) -> None:
    if not isinstance(value, list):
        raise _fail("model-index", "must be a list of models")
    for i, model in enumerate(value):
        where = f"model-index[{i}]"
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            raise _fail(where, "needs a 'name' string")
        results = model.get("results")
        if not isinstance(results, list):
            raise _fail(where, "needs a 'results' list")
        for j, result in enumerate(results):
            at = f"{where}.results[{j}]"
            if not isinstance(result, dict):
                raise _fail(at, "must be a mapping")
            task, dataset = result.get("task"), result.get("dataset")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                raise _fail(at, "needs task.type (a string)")
            if not isinstance(dataset, dict) or not all(
                    isinstance(dataset.get(k), str) for k in ("type", "name")):
                raise _fail(at, "needs dataset.type and dataset.name (strings)")
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("type"), str) and "value" in m
                    for m in metrics):
                raise _fail(at, "needs metrics: a list of {type, value}")


def validate_metadata(meta: dict[str, Any]) -> None:
    """Refuse metadata the Hub would refuse (see the module docstring)."""
    license_ = meta.get("license")
    if license_ is not None and (not isinstance(license_, str) or license_ not in LICENSES):
        raise _fail("license", f"{str(license_)[:80]!r} is not one of the Hub's licenses "
                               f"(use 'other' with license_name)")
    for field in STRING_OR_LIST:
        if field in meta:
            _strings(field, meta[field])
    if "model-index" in meta:
        _model_index(meta["model-index"])


def validate_card(text: str) -> dict[str, Any] | None:
    """The card's metadata (None without a block), after :func:`validate_metadata`."""
    meta, error, _ = front_matter(text)
    if error is not None:
        raise InvalidModelCardError(f"README.md metadata: {error}")
    if meta is not None:
        validate_metadata(meta)
    return meta


def validate_card_bytes(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidModelCardError("README.md is not UTF-8 text") from None
    validate_card(text)
