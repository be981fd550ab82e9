"""A hub reached over HTTP (the native API of ``adapterhub serve``).

Pushing: the hub says which blobs it lacks; blobs under :data:`SMALL` bytes travel together in
bundles, larger ones as resumable uploads in the hub's chunk size: before sending, the client
asks which chunks the hub already holds (after a dropped connection, or from an upload an
earlier process left unfinished) and sends only the others. The hub re-hashes every blob.
Pulling into a registry: blobs under :data:`SMALL` bytes arrive as the hub stores them
(compressed chunks, in framed streams of about :data:`BUNDLE_READ` raw bytes, :data:`STREAMS`
at a time); the receiving registry decodes and hashes every chunk once and keeps the stored
bytes. Otherwise (:meth:`HttpRemote.download_blobs`): small blobs arrive in framed streams,
large ones as a :class:`BlobStream` read with ``Range`` requests that resume where a dropped
connection stopped; the client hashes every blob as it hands it on. Large blobs are read and
sent a chunk at a time both ways, so memory stays bounded however large a tensor is.

A hub that keeps blobs in an object store hands out presigned URLs (docs/objectstore.md):
a large upload is one ``PUT`` of the blob, with the headers the hub lists, or parts of a
staging object, several blobs at once; the URLs of the large blobs a pull needs come in one
answer, and their bytes are read with :mod:`http.client` straight into each blob's buffer
(:mod:`adapterhub_remotes_http.presigned`). Requests to those URLs carry no hub token.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from functools import partial
from http.client import HTTPException
from typing import TYPE_CHECKING

from adapterhub.errors import (AdapterNotFoundError, ConflictError, IntegrityError,
                               RegistryError, error_class)
from adapterhub.plugin_api import (TRANSPORT_ERRORS, BlobStream, Buffer, HubClient,
                                   ProgressCallback, Remote)
from adapterhub_remotes_http.presigned import PresignedClient

if TYPE_CHECKING:
    from adapterhub.plugin_api import CommitResult, Manifest, StoredBlob, VersionInfo

SMALL = 4 << 20  # bytes: blobs below this go in bundles
BUNDLE = 32 << 20  # bytes per bundle sent (the hub accepts up to 64 MiB)
BUNDLE_READ = 16 << 20  # bytes per bundle read
STREAMS = 2  # stored-blob streams in flight while the caller stores what arrived
PARTS_IN_FLIGHT = 4  # presigned parts sent (or ranges fetched) at once
AHEAD = 128 << 20  # bytes of large blobs in flight at once (object-store uploads, downloads)
RANGE_PIECE = 16 << 20  # bytes per ranged GET of a redirected download
ERROR_FRAME = 2**64 - 1


def _sha256(data: Buffer) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class HttpRemote(Remote):
    """``http://host:port`` or ``https://…``: an ``adapterhub serve`` hub."""

    def __init__(self, url: str) -> None:
        super().__init__(url.rstrip("/"))
        self.client = HubClient(self.url)
        self._blobs: dict[str, tuple[str, int]] = {}  # digest → (repository, size) seen
        self._repository: str | None = None
        self._presigned = PresignedClient()

    def close(self) -> None:
        self.client.close()

    # -- reading versions -------------------------------------------------------------------

    def _version(self, data: dict) -> VersionInfo:
        from adapterhub.plugin_api import VersionInfo

        version = VersionInfo.from_dict(data)
        if version.manifest is not None:
            for entry in version.manifest.tensors.values():
                self._blobs.setdefault(entry.digest, (version.name, entry.nbytes))
        self._repository = version.name
        return version

    def resolve(self, ref: str) -> VersionInfo:
        return self._version(self.client.get_json("/api/v1/resolve", params={"ref": ref}))

    def find(self, digest: str) -> VersionInfo | None:
        try:
            return self._version(self.client.get_json(f"/api/v1/find/{digest}"))
        except AdapterNotFoundError:
            return None

    # -- pushing ----------------------------------------------------------------------------

    def missing_blobs(self, digests: Iterable[str]) -> set[str]:
        wanted = sorted(set(digests))
        if not wanted:
            return set()
        return set(self.client.post_json("/api/v1/blobs/missing",
                                         {"digests": wanted})["missing"])

    def upload_blobs(self, blobs: Iterable[tuple[str, Buffer | BlobStream, int]], *,
                     progress: ProgressCallback | None = None) -> None:
        """Small blobs in bundles; large ones as resumable uploads, several at once (up to
        :data:`AHEAD` bytes) when their bytes go straight to an object store."""
        report = progress or (lambda n: None)
        bundle: list[tuple[str, memoryview, int]] = []
        size = 0
        with ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="adapterhub-push") as pool:
            sending: deque[tuple[Future[None], int]] = deque()
            for digest, data, itemsize in blobs:
                if isinstance(data, BlobStream):
                    blob = data
                else:
                    view = memoryview(data).cast("B")
                    if len(view) < SMALL:
                        bundle.append((digest, view, itemsize))
                        size += len(view)
                        if size >= BUNDLE:
                            self._send_bundle(bundle, report)
                            bundle, size = [], 0
                        continue
                    blob = BlobStream.of(view)
                info = self._begin_upload(digest, blob.size, itemsize)
                if not info.get("urls"):
                    self._upload_large(digest, blob, itemsize, report, info)
                    continue
                while sending and sum(n for _, n in sending) + blob.size > AHEAD:
                    sending.popleft()[0].result()
                sending.append((pool.submit(self._upload_large, digest, blob, itemsize,
                                            report, info), blob.size))
            if bundle:
                self._send_bundle(bundle, report)
            for future, _ in sending:
                future.result()

    def _send_bundle(self, bundle: list[tuple[str, memoryview, int]],
                     report: ProgressCallback) -> None:
        index = json.dumps([{"digest": d, "size": len(v), "itemsize": i}
                            for d, v, i in bundle]).encode()
        body = b"".join([struct.pack("<Q", len(index)), index, *(v for _, v, _ in bundle)])
        self._send("POST", "/api/v1/blobs", body)
        report(sum(len(v) for _, v, _ in bundle))

    def _send(self, method: str, path: str, data: Buffer) -> None:
        self.client.request(method, path, content=memoryview(data).cast("B"),
                            headers={"Content-Type": "application/octet-stream"})

    def _begin_upload(self, digest: str, size: int, itemsize: int) -> dict:
        return self.client.post_json("/api/v1/uploads", {
            "digest": digest, "size": size, "itemsize": itemsize, "presigned": True,
            "direct": True})

    def _upload_large(self, digest: str, blob: BlobStream, itemsize: int,
                      report: ProgressCallback, info: dict | None = None) -> None:
        """One blob as a resumable upload, read a chunk at a time (a few chunks in memory);
        an upload that is one ``PUT`` to the object store is streamed from the source."""
        for _ in range(3):  # again from the start if the hub dropped the upload (gc)
            info = info or self._begin_upload(digest, blob.size, itemsize)
            if info["complete"]:
                report(blob.size)
                return
            upload, chunk = info["upload_id"], info["chunk_size"]
            count = max(1, -(-blob.size // chunk))
            received = set(info["received"])
            report(sum(min(chunk, blob.size - i * chunk) for i in received))
            todo = ((i, piece) for i, piece in enumerate(blob.chunks(chunk))
                    if i not in received) if len(received) < count else iter(())
            urls, headers = info.get("urls"), info.get("headers", {})
            try:
                if urls and count == 1 and not received:  # one PUT, streamed from the source
                    report(self._put_presigned(urls[0], blob.pieces, blob.size, headers))
                elif urls:  # straight to the object store, parts in parallel
                    with ThreadPoolExecutor(PARTS_IN_FLIGHT) as pool:
                        sending: deque[Future[int]] = deque()
                        for i, piece in todo:
                            sending.append(pool.submit(
                                self._put_presigned, urls[i],
                                lambda piece=piece: (piece,), len(piece), headers))
                            if len(sending) >= PARTS_IN_FLIGHT:
                                report(sending.popleft().result())
                        for sent in sending:
                            report(sent.result())
                for i, piece in todo if not urls else ():
                    self._put_chunk(upload, i, piece)
                    report(len(piece))
                self.client.request("POST", f"/api/v1/uploads/{upload}/finish")
                return
            except AdapterNotFoundError:  # the upload vanished (finished by another pusher)
                info = None
            except ConflictError:  # another upload of the same bytes wrote the object since
                info = None
        raise RegistryError(f"{self.url}: the upload of blob {digest} did not complete in 3 "
                            f"attempts", hint="Is a gc with --grace 0 running on the hub, or "
                                              "is the same blob being pushed again and "
                                              "again? Push again")

    def _put_presigned(self, url: str, pieces: Callable[[], Iterable[Buffer]], size: int,
                       headers: dict[str, str]) -> int:
        """Send ``size`` bytes, the ``pieces()``, to the object store as one ``PUT``
        (retrying, with the pieces read again); the size."""
        self._on_store(lambda: self._presigned.put(url, pieces(), size, headers), "upload")
        return size

    def _on_store(self, request: Callable[[], None], what: str) -> None:
        """Run a request to a presigned URL, retrying failed connections and 5xx."""
        for attempt in range(self.client.retries + 1):
            try:
                return request()
            except (OSError, HTTPException) as exc:
                if attempt == self.client.retries:
                    raise RegistryError(f"the object store kept failing to {what} a blob: "
                                        f"{type(exc).__name__}: {exc}") from None
            self.client.pause(attempt)

    def _put_chunk(self, upload: str, index: int, data: memoryview) -> None:
        """Send one chunk; if the connection keeps failing, ask the hub whether it arrived
        (the request may have been stored before the answer was lost)."""
        path = f"/api/v1/uploads/{upload}/chunks/{index}"
        try:
            self._send("PUT", path, data)
        except RegistryError as exc:
            if "cannot reach" not in exc.message:
                raise
            status = self.client.get_json(f"/api/v1/uploads/{upload}")
            if index not in status["received"]:
                raise

    def commit(self, name: str, manifest: Manifest, *, message: str | None = None,
               author: str | None = None, tags: Sequence[str] = (),
               created_at: datetime | None = None) -> CommitResult:
        from adapterhub.plugin_api import CommitResult, validate_name

        validate_name(name)
        body = {"manifest": json.loads(manifest.canonical()), "message": message,
                "author": author, "tags": list(tags),
                "created_at": created_at.isoformat() if created_at else None}
        result = self.client.post_json(f"/api/v1/repos/{name}/commit", body)
        return CommitResult(self._version(result["version"]), result["created"])

    # -- pulling ----------------------------------------------------------------------------

    def download_blobs(self, digests: Iterable[str], *,
                       progress: ProgressCallback | None = None
                       ) -> Iterator[tuple[str, bytes]]:
        """Small blobs in bundles (the next bundle is fetched while the caller stores the
        current one), large ones several at once (up to :data:`AHEAD` bytes ahead), all in
        the order asked."""
        report = progress or (lambda n: None)
        plan: list[list[str]] = []  # a bundle of small blobs, or [one large blob]
        run: list[str] = []
        run_bytes = 0
        for digest in digests:
            size = self._blobs.get(digest, (None, SMALL))[1]
            if size >= SMALL:
                plan += [run, [digest]] if run else [[digest]]
                run, run_bytes = [], 0
                continue
            run.append(digest)
            run_bytes += size
            if run_bytes >= BUNDLE_READ:
                plan.append(run)
                run, run_bytes = [], 0
        if run:
            plan.append(run)

        def small(group: list[str]) -> bool:
            return self._blobs.get(group[0], (None, SMALL))[1] < SMALL

        urls = self._store_urls([g[0] for g in plan if not small(g)])

        def size(index: int) -> int:
            return self._blobs[plan[index][0]][1]

        def fetched(index: int) -> bool:  # a large blob read whole from the object store
            return not small(plan[index]) and plan[index][0] in urls and size(index) <= AHEAD

        with ThreadPoolExecutor(1, thread_name_prefix="adapterhub-pull") as pool, \
                ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="adapterhub-pull") as big:
            ahead: Future | None = None
            fetching: dict[int, Future[bytearray]] = {}  # by place in the plan
            for index, group in enumerate(plan):
                digest = group[0]
                if fetched(index):  # this one, and the next ones within AHEAD bytes
                    end, budget = index, 0
                    while end < len(plan) and fetched(end) and (
                            end == index or budget + size(end) <= AHEAD):
                        if end not in fetching:
                            fetching[end] = big.submit(self._read_ranges, urls[plan[end][0]],
                                                       plan[end][0], size(end), report)
                        budget += size(end)
                        end += 1
                    yield digest, fetching.pop(index).result()
                    continue
                if not small(group):  # streamed, a piece at a time
                    source = (partial(self._stream_ranges, urls[digest], digest, size(index),
                                      report) if digest in urls
                              else partial(self._stream_large, digest, size(index), report))
                    yield digest, BlobStream(size(index), source)
                    continue
                current = ahead or pool.submit(self._read_bundle, group, report)
                following = plan[index + 1] if index + 1 < len(plan) else None
                ahead = (pool.submit(self._read_bundle, following, report)
                         if following and small(following) else None)
                yield from current.result()

    def _store_urls(self, digests: list[str]) -> dict[str, str]:
        """Presigned URLs of those blobs the hub keeps in an object store, asked for at once
        (none from a hub that keeps them in its database)."""
        urls: dict[str, str] = {}
        by_repo: dict[str, list[str]] = {}
        for digest in digests:
            by_repo.setdefault(self._repository_of(digest), []).append(digest)
        for repo, wanted in by_repo.items():
            urls.update(self.client.post_json(f"/api/v1/repos/{repo}/blobs/urls",
                                              {"digests": wanted})["urls"])
        return urls

    stored_reads = True
    stored_max_bytes = SMALL - 1  # larger blobs: resumable Range requests

    def download_stored(self, digests: Iterable[str], *,
                        progress: ProgressCallback | None = None) -> Iterator[StoredBlob]:
        """Blobs as the hub stores them, in order, in groups of about :data:`BUNDLE_READ` raw
        bytes fetched :data:`STREAMS` at a time (keep-alive connections of one client)."""
        report = progress or (lambda n: None)
        groups: list[list[str]] = [[]]
        size = 0
        for digest in digests:
            if size >= BUNDLE_READ:
                groups.append([])
                size = 0
            groups[-1].append(digest)
            size += self._blobs.get(digest, (None, SMALL))[1]
        groups = [g for g in groups if g]
        with ThreadPoolExecutor(STREAMS, thread_name_prefix="adapterhub-pull") as pool:
            ahead = [pool.submit(self._read_stored, g) for g in groups[:STREAMS]]
            for index in range(len(groups)):
                blobs = ahead.pop(0).result()
                if index + STREAMS < len(groups):
                    ahead.append(pool.submit(self._read_stored, groups[index + STREAMS]))
                for blob in blobs:
                    report(blob.size)
                    yield blob

    def _read_stored(self, digests: list[str]) -> list[StoredBlob]:
        from adapterhub.plugin_api import StoredBlob

        by_repo: dict[str, list[str]] = {}
        for digest in digests:
            by_repo.setdefault(self._repository_of(digest), []).append(digest)
        received: dict[str, StoredBlob] = {}
        for repo, wanted in by_repo.items():
            body = self.client.request("POST", f"/api/v1/repos/{repo}/blobs/stored",
                                       json={"digests": wanted}).content
            offset = 0
            for digest in wanted:
                (length,) = struct.unpack_from("<Q", body, offset)
                offset += 8
                if length == ERROR_FRAME:
                    self._raise_frame(body, offset)
                header = json.loads(body[offset:offset + length])
                offset += length
                chunks = []
                for raw, stored in header["chunks"]:
                    chunks.append((raw, body[offset:offset + stored]))
                    offset += stored
                if header["digest"] != digest:
                    raise IntegrityError(f"{self.url}: asked for blob {digest}, got "
                                         f"{header['digest']}")
                received[digest] = StoredBlob(digest, header["size"], header["codec"],
                                              header["chunk_size"], tuple(chunks))
        return [received[digest] for digest in digests]

    def _raise_frame(self, body: bytes | memoryview, offset: int) -> None:
        (length,) = struct.unpack_from("<Q", body, offset)
        error = json.loads(bytes(body[offset + 8:offset + 8 + length]))
        cls = error_class(error.get("code")) or IntegrityError
        raise cls.from_wire(f"{self.url}: {error['error']}", error.get("hint"), error)

    def _repository_of(self, digest: str) -> str:
        repo = self._blobs.get(digest, (self._repository, 0))[0]
        if repo is None:
            raise AdapterNotFoundError(f"{self.url}: resolve a version before reading its blobs")
        return repo

    def _checked(self, digest: str, data: Buffer, actual: str | None = None) -> Buffer:
        actual = actual or _sha256(data)
        if actual != digest:
            raise IntegrityError(f"{self.url}: blob {digest} arrived corrupt (its bytes hash "
                                 f"to {actual})", hint="Pull again; if it persists, run "
                                                       "'adapterhub verify' on the hub")
        return data

    def _read_bundle(self, digests: list[str], report: ProgressCallback
                     ) -> list[tuple[str, bytes]]:
        by_repo: dict[str, list[str]] = {}
        for digest in digests:
            by_repo.setdefault(self._repository_of(digest), []).append(digest)
        received: dict[str, bytes] = {}
        for repo, wanted in by_repo.items():
            body = memoryview(self.client.request("POST", f"/api/v1/repos/{repo}/blobs/read",
                                                  json={"digests": wanted}).content)
            offset = 0
            for digest in wanted:
                (size,) = struct.unpack_from("<Q", body, offset)
                offset += 8
                if size == ERROR_FRAME:
                    self._raise_frame(body, offset)
                received[digest] = self._checked(digest, bytes(body[offset:offset + size]))
                offset += size
                report(size)
        return [(digest, received[digest]) for digest in digests]

    def _read_ranges(self, url: str, digest: str, size: int,
                     report: ProgressCallback) -> bytearray:
        """A blob from the object store, :data:`PARTS_IN_FLIGHT` ranges at once (each
        retried on its own), hashed in order as the ranges arrive."""
        data = bytearray(size)
        view = memoryview(data)
        h = hashlib.sha256()

        def fetch(start: int) -> memoryview:
            piece = view[start:start + RANGE_PIECE]
            self._on_store(lambda: self._presigned.get_into(url, start, piece), "download")
            return piece

        with ThreadPoolExecutor(PARTS_IN_FLIGHT) as pool:
            for piece in pool.map(fetch, range(0, size, RANGE_PIECE)):
                h.update(piece)  # (while the later ranges are still arriving)
                report(len(piece))
                piece.release()
        view.release()  # (the caller may resize the bytes)
        return self._checked(digest, data, "sha256:" + h.hexdigest())

    def _stream_ranges(self, url: str, digest: str, size: int, report: ProgressCallback
                       ) -> Iterator[bytes]:
        """A blob from the object store, one :data:`RANGE_PIECE` after another (each
        retried on its own), hashed as it goes (:class:`IntegrityError` after the last)."""
        h = hashlib.sha256()
        for start in range(0, size, RANGE_PIECE):
            piece = memoryview(bytearray(min(RANGE_PIECE, size - start)))
            self._on_store(lambda: self._presigned.get_into(url, start, piece), "download")
            h.update(piece)
            report(len(piece))
            yield piece
        self._checked(digest, b"", "sha256:" + h.hexdigest())

    def _stream_large(self, digest: str, size: int, report: ProgressCallback
                      ) -> Iterator[bytes]:
        """One blob by ``GET``, piece by piece as it arrives, resuming with ``Range`` after a
        dropped connection; hashed as it goes (:class:`IntegrityError` after the last piece).
        A blob the hub redirects to its object store comes from there."""
        path = f"/api/v1/repos/{self._repository_of(digest)}/blobs/{digest}"
        h = hashlib.sha256()
        position = failures = 0
        while True:
            headers = {"Range": f"bytes={position}-"} if position else {}
            try:
                with self.client.stream("GET", path, headers=headers) as response:
                    if response.status_code in (302, 307):
                        location = response.headers["location"]
                        response.read()  # (the hub's connection stays free for other requests)
                        break
                    if response.status_code >= 400:
                        response.read()
                        if response.status_code not in (500, 502, 503, 504):
                            raise self.client.error(response)
                        raise HTTPException(f"HTTP {response.status_code}")
                    # the hub sent the whole blob again: skip what was passed on already
                    skip = position if response.status_code != 206 else 0
                    for piece in response.iter_bytes(1 << 20):
                        if skip:
                            dropped, piece = min(skip, len(piece)), piece[skip:]
                            skip -= dropped
                        if piece:
                            h.update(piece)
                            position += len(piece)
                            report(len(piece))
                            yield piece
                if position >= size:
                    self._checked(digest, b"", "sha256:" + h.hexdigest())
                    return
                raise HTTPException("the stream ended early")
            except TRANSPORT_ERRORS as exc:
                failures += 1
                if failures > self.client.retries:
                    raise self.client.unreachable(exc) from None
                self.client.pause(failures - 1)
        yield from self._stream_ranges(location, digest, size, report)  # (redirected)
