""":mod:`adapterhub.xet` over the registry: a persistent :class:`~adapterhub.xet.XetStorage`
and CAS access tokens signed by the hub's own tokens.

- :class:`RegistryXetStorage` keeps xorbs, shards and files in :mod:`registry_db.xet` (bytes
  in the ordinary blob store). The Xet *scope* is the uploading caller's
  :attr:`~registry_db.access.Caller.owner` (``token:<id>``): what one token uploads, only that
  token may dedup against, reference or commit.
- :class:`HubTokenSigner` signs CAS tokens with the key of the hub token they were issued
  for (:meth:`registry_db.tokens.TokenStore.sign`), so any replica can check them and
  revoking the hub token voids them at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict

from adapterhub.errors import AuthenticationError
from adapterhub.xet.hashes import hash_to_hex, hex_to_hash
from adapterhub.xet.shard import FileEntry, Term
from adapterhub.xet.tokens import TOKEN_PREFIX, Grant
from adapterhub.xet.xorb import XorbInfo
from registry_db.tokens import TokenStore
from registry_db.xet import StoredFile, XetStore

#: xorbs kept in memory after a read (a reconstruction reads one xorb in several windows)
XORB_CACHE = 2


def pack_xorb(info: XorbInfo) -> bytes:
    n = info.num_chunks
    return struct.pack(f"<QI{n}I{n}Q", info.data_size, n, *info.chunk_sizes,
                       *info.chunk_ends) + b"".join(info.chunk_hashes)


def unpack_xorb(xorb_hash: bytes, packed: bytes) -> XorbInfo:
    data_size, n = struct.unpack_from("<QI", packed)
    numbers = struct.unpack_from(f"<{n}I{n}Q", packed, 12)
    start = 12 + 12 * n
    hashes = tuple(packed[start + 32 * i:start + 32 * (i + 1)] for i in range(n))
    return XorbInfo(xorb_hash, hashes, tuple(numbers[:n]), tuple(numbers[n:]), data_size)


def pack_file(entry: FileEntry) -> bytes:
    return json.dumps({
        "terms": [[hash_to_hex(t.xorb_hash), t.unpacked_bytes, t.chunk_start, t.chunk_end,
                   t.xorb_flags] for t in entry.terms],
        "verification": None if entry.verification is None
        else [v.hex() for v in entry.verification]}, separators=(",", ":")).encode()


def unpack_file(stored: StoredFile) -> FileEntry:
    fields = json.loads(stored.entry)
    terms = tuple(Term(hex_to_hash(x), size, start, end, flags)
                  for x, size, start, end, flags in fields["terms"])
    verification = fields["verification"]
    return FileEntry(hex_to_hash(stored.file_hash), terms,
                     None if verification is None else tuple(bytes.fromhex(v)
                                                              for v in verification),
                     stored.sha256)


class RegistryXetStorage:
    """:class:`~adapterhub.xet.XetStorage` over a registry's :class:`XetStore`."""

    def __init__(self, store: XetStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, bytearray] = OrderedDict()

    def xorb_info(self, xorb_hash: bytes) -> XorbInfo | None:
        packed = self.store.xorb_info(hash_to_hex(xorb_hash))
        return None if packed is None else unpack_xorb(xorb_hash, packed)

    def xorb_visible(self, xorb_hash: bytes, scope: str) -> bool:
        name = hash_to_hex(xorb_hash)
        return bool(self.store.granted(scope, "xorb", [name]))

    def put_xorb(self, info: XorbInfo, data: bytes, scope: str,
                 dedup_chunks: Sequence[bytes]) -> bool:
        return self.store.put_xorb(info.hex, pack_xorb(info), data, scope,
                                   [hash_to_hex(c) for c in dedup_chunks])

    def read_xorb(self, xorb_hash: bytes, start: int, end: int) -> bytes:
        with self._lock:
            data = self._cache.get(xorb_hash)
            if data is not None:
                self._cache.move_to_end(xorb_hash)
        if data is None:
            data = self.store.read_xorb(hash_to_hex(xorb_hash))
            with self._lock:
                self._cache[xorb_hash] = data
                while len(self._cache) > XORB_CACHE:
                    self._cache.popitem(last=False)
        return bytes(data[start:end])

    def xorbs_with_chunk(self, chunk_hash: bytes, scope: str) -> list[bytes]:
        return [hex_to_hash(x) for x in self.store.xorbs_with_chunk(hash_to_hex(chunk_hash),
                                                                     scope)]

    def put_shard(self, shard_id: str, data: bytes, files: Sequence[FileEntry], scope: str,
                  dedup: Sequence[tuple[bytes, bytes]]) -> bool:
        stored = [StoredFile(hash_to_hex(f.file_hash), f.sha256, f.size, pack_file(f),
                             tuple(hash_to_hex(t.xorb_hash) for t in f.terms))
                  for f in files]
        return self.store.put_shard(shard_id, data, stored, scope,
                                    [(hash_to_hex(c), hash_to_hex(x)) for c, x in dedup])

    def file_by_hash(self, file_hash: bytes, scope: str) -> FileEntry | None:
        found = self.store.file_by_hash(hash_to_hex(file_hash), scope)
        return None if found is None else unpack_file(found)

    def file_by_sha256(self, sha256: str, scope: str) -> FileEntry | None:
        found = self.store.file_by_sha256(sha256, scope)
        return None if found is None else unpack_file(found)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class HubTokenSigner:
    """CAS tokens ``xetcas.<payload>.<signature>``, the signature made with the key of the
    hub token named by the grant's scope (``token:<id>``)."""

    def __init__(self, tokens: TokenStore, *, now=time.time) -> None:
        self.tokens = tokens
        self._now = now

    @staticmethod
    def _token_id(scope: str) -> int:
        kind, _, number = scope.partition(":")
        if kind != "token" or not number.isdigit():
            raise AuthenticationError("CAS tokens are issued for hub tokens only")
        return int(number)

    def issue(self, grant: Grant) -> str:
        body = json.dumps(asdict(grant), sort_keys=True, separators=(",", ":"))
        payload = _b64(body.encode("utf-8"))
        return f"{TOKEN_PREFIX}{payload}.{self.tokens.sign(self._token_id(grant.scope), payload)}"

    def verify(self, token: str) -> Grant:
        bad = AuthenticationError("the CAS access token is malformed",
                                  hint="Ask the hub's xet-write-token route for a new one")
        if not token.startswith(TOKEN_PREFIX) or token.count(".") != 2:
            raise bad
        payload, signature = token[len(TOKEN_PREFIX):].split(".")
        try:
            grant = Grant(**json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload)
                                                                                  % 4))))
            token_id = self._token_id(grant.scope)
        except (ValueError, TypeError, binascii.Error):
            raise bad from None
        self.tokens.check_signature(token_id, payload, signature)  # revoked: refused
        if grant.expires < self._now():
            raise AuthenticationError("the CAS access token has expired",
                                      hint="Ask the hub's xet-write-token route for a new one")
        return grant
