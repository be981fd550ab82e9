"""Xet, server side: the formats, a verifying CAS service and the routes hf_xet uploads through.

A self-contained package the hub mounts; it knows nothing of the registry. The hub supplies
three things: a store (:class:`XetStorage`), a signer for CAS access tokens
(:class:`TokenSigner`, e.g. :class:`HmacTokenSigner`) and an ``authorize(request, repo)``
callable that says who may upload where (:class:`Caller`)::

    service = XetService(storage)
    app.include_router(xet_router(service, authorize, HmacTokenSigner(secret)))
    ...
    for piece in service.read_by_sha256(lfs_oid, scope):   # at commit time
        ...

Modules: :mod:`~adapterhub.xet.hashes`, :mod:`~adapterhub.xet.chunking`,
:mod:`~adapterhub.xet.compression`, :mod:`~adapterhub.xet.xorb`, :mod:`~adapterhub.xet.shard`
(the formats); :mod:`~adapterhub.xet.service`, :mod:`~adapterhub.xet.storage`,
:mod:`~adapterhub.xet.tokens`, :mod:`~adapterhub.xet.routes`; :mod:`~adapterhub.xet.pack`
(packing bytes as a client would). See docs/xet.md.
"""

from adapterhub.xet.routes import Caller, RepoRef, XetStats, xet_router
from adapterhub.xet.service import XetLimits, XetService
from adapterhub.xet.shard import FileEntry, Term
from adapterhub.xet.storage import MemoryXetStorage, XetStorage
from adapterhub.xet.tokens import Grant, HmacTokenSigner, TokenSigner
from adapterhub.xet.xorb import XorbInfo

__all__ = ["Caller", "FileEntry", "Grant", "HmacTokenSigner", "MemoryXetStorage", "RepoRef",
           "Term", "TokenSigner", "XetLimits", "XetService", "XetStats", "XetStorage",
           "XorbInfo", "xet_router"]
