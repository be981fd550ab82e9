"""``adapterhub serve``: a hub over a registry, for adapterhub clients and Hugging Face clients.

- :mod:`~adapterhub.hub.app` builds the FastAPI application (:func:`create_app`);
- :mod:`~adapterhub.hub.native` is the native API that ``push``/``pull`` over ``http(s)://``
  use (negotiate blobs, resumable chunked uploads, atomic commits, tags, listing, lineage);
- :mod:`~adapterhub.hub.hf_read` and :mod:`~adapterhub.hub.hf_write` speak the Hugging Face
  Hub download and upload protocols, so ``HF_ENDPOINT`` points PEFT, transformers, vLLM and
  ``huggingface_hub`` at the hub;
- :mod:`~adapterhub.hub.auth` checks bearer tokens and their scopes on every route;
- :mod:`~adapterhub.hub.observe` writes JSON access logs, counts Prometheus metrics and limits
  request bodies; :mod:`~adapterhub.hub.view` lists repositories and a repository's versions,
  and :mod:`~adapterhub.hub.pages` has the other web pages (a page per version, lineage
  graphs, metric plots, diffs, search).

The server keeps no state of its own: everything is in the registry database, so replicas
over one PostgreSQL serve the same hub. Rendered files are cached per process, keyed by version
digest, and are byte-identical on every replica.
"""

from adapterhub.hub.app import create_app

__all__ = ["create_app"]
