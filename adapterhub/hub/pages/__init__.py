"""The hub's web pages for people: a page per version, lineage graphs, metric plots, diffs
and search. Server-rendered HTML and inline SVG, no JavaScript, in the hub's one process.

- :mod:`~adapterhub.hub.pages.version`: ``/{ns}/{name}`` (newest), ``/{ns}/{name}/v3``,
  ``@3``, a tag, a commit id: card, configuration, metrics, labels, tensors, files, snippets;
- :mod:`~adapterhub.hub.pages.lineage`: ancestors and descendants drawn as SVG;
- :mod:`~adapterhub.hub.pages.plot`: each metric across a repository's versions, as SVG;
- :mod:`~adapterhub.hub.pages.compare`: ``/diff?a=REF&b=REF``;
- :mod:`~adapterhub.hub.pages.search`: ``/search?q=…``;
- :mod:`~adapterhub.hub.pages.card`: where model cards are found, and safe Markdown.

Every read goes through the caller's view of the registry
(:func:`adapterhub.hub.auth.registry`), so a page shows exactly what the API would answer
the same caller, and everything shown is escaped. Browsers get HTML; other clients get JSON
on the same paths. The repository list (``/``) and a repository's versions (``/ui/…``) are
in :mod:`adapterhub.hub.view`.
"""

from fastapi import APIRouter

from adapterhub.hub.pages import compare, search, version

router = APIRouter()
router.include_router(compare.router)
router.include_router(search.router)
router.include_router(version.router)  # its /{ns}/{name}… paths match broadly: last

__all__ = ["router"]
