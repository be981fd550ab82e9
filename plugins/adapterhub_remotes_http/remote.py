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

A hub that keeps blobs in an object store hands out presigned URLs: large uploads ``PUT``
their chunks straight to the store (the hub verifies the whole blob when the upload
finishes), and large downloads are redirected (``307``) to the store. Requests to those URLs
carry no hub token.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

import httpx

from adapterhub.errors import AdapterNotFoundError, IntegrityError, RegistryError, error_class
from adapterhub.plugin_api import BlobStream, Buffer, HubClient, ProgressCallback, Remote

if TYPE_CHECKING:
    from adapterhub.plugin_api import CommitResult, Manifest, StoredBlob, VersionInfo

SMALL = 4 << 20  # bytes: blobs below this go in bundles
BUNDLE = 32 << 20  # bytes per bundle sent (the hub accepts up to 64 MiB)
BUNDLE_READ = 16 << 20  # bytes per bundle read
STREAMS = 2  # stored-blob streams in flight while the caller stores what arrived
PARTS_IN_FLIGHT = 4  # presigned parts sent (or ranges fetched) at once
RANGE_PIECE = 16 << 20  # bytes per ranged GET of a redirected download
ERROR_FRAME = 2**64 - 1


def _sha256(data: Buffer) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Body:
    """A request body (sent again when a request is retried) whose bytes can be dropped."""

    def __init__(self, data: Buffer) -> None:
        self.data: Buffer | None = data

    def __iter__(self) -> Iterator[bytes]:
        yield bytes(self.data)


class HttpRemote(Remote):
    """``http://host:port`` or ``https://…``: an ``adapterhub serve`` hub."""

    def __init__(self, url: str) -> None:
        super().__init__(url.rstrip("/"))
        self.client = HubClient(self.url)
        self._blobs: dict[str, tuple[str, int]] = {}  # digest → (repository, size) seen
        self._repository: str | None = None
        self._store_client: httpx.Client | None = None

    def close(self) -> None:
        self.client.close()
        if self._store_client is not None:
            self._store_client.close()

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
        report = progress or (lambda n: None)
        bundle: list[tuple[str, memoryview, int]] = []
        size = 0
        for digest, data, itemsize in blobs:
            if isinstance(data, BlobStream):
                self._upload_large(digest, data, itemsize, report)
                continue
            view = memoryview(data).cast("B")
            if len(view) >= SMALL:
                self._upload_large(digest, BlobStream.of(view), itemsize, report)
                continue
            bundle.append((digest, view, itemsize))
            size += len(view)
            if size >= BUNDLE:
                self._send_bundle(bundle, report)
                bundle, size = [], 0
        if bundle:
            self._send_bundle(bundle, report)

    def _send_bundle(self, bundle: list[tuple[str, memoryview, int]],
                     report: ProgressCallback) -> None:
        index = json.dumps([{"digest": d, "size": len(v), "itemsize": i}
                            for d, v, i in bundle]).encode()
        body = b"".join([struct.pack("<Q", len(index)), index, *(v for _, v, _ in bundle)])
        self._send("POST", "/api/v1/blobs", body)
        report(sum(len(v) for _, v, _ in bundle))

    def _send(self, method: str, path: str, data: Buffer) -> None:
        """A request with ``data`` as its body, let go of when the request is done: httpx
        keeps a response and its request (with the body) in a reference cycle until the
        garbage collector runs, which an upload of many large chunks may not start for a
        long time."""
        body = _Body(data)
        try:
            self.client.request(method, path, content=body, headers={
                "Content-Length": str(len(data)), "Content-Type": "application/octet-stream"})
        finally:
            body.data = None

    def _upload_large(self, digest: str, blob: BlobStream, itemsize: int,
                      report: ProgressCallback) -> None:
        """One blob as a resumable upload, read a chunk at a time (a few chunks in memory)."""
        for _ in range(3):  # again from the start if the hub dropped the upload (gc)
            info = self.client.post_json("/api/v1/uploads", {
                "digest": digest, "size": blob.size, "itemsize": itemsize,
                "presigned": True})
            if info["complete"]:
                report(blob.size)
                return
            upload, chunk = info["upload_id"], info["chunk_size"]
            count = max(1, -(-blob.size // chunk))
            received = set(info["received"])
            report(sum(min(chunk, blob.size - i * chunk) for i in received))
            todo = ((i, piece) for i, piece in enumerate(blob.chunks(chunk))
                    if i not in received) if len(received) < count else iter(())
            try:
                if info.get("urls"):  # straight to the object store, parts in parallel
                    self._store()
                    with ThreadPoolExecutor(PARTS_IN_FLIGHT) as pool:
                        sending: deque[Future[int]] = deque()
                        for i, piece in todo:
                            sending.append(pool.submit(self._put_presigned, info["urls"][i],
                                                       piece))
                            if len(sending) >= PARTS_IN_FLIGHT:
                                report(sending.popleft().result())
                        for sent in sending:
                            report(sent.result())
                for i, piece in todo:  # (nothing left after the presigned parts)
                    self._put_chunk(upload, i, piece)
                    report(len(piece))
                self.client.request("POST", f"/api/v1/uploads/{upload}/finish")
                return
            except AdapterNotFoundError:  # the upload vanished (finished by another pusher)
                continue
        raise RegistryError(f"{self.url}: the upload of blob {digest} kept disappearing",
                            hint="Is a gc with --grace 0 running on the hub? Push again")

    def _put_presigned(self, url: str, data: memoryview) -> int:
        """Send one chunk to the object store (retrying: a part can be sent again); its
        size."""
        for attempt in range(self.client.retries + 1):
            try:
                response = self._store().put(url, content=bytes(data))
            except httpx.TransportError as exc:
                if attempt == self.client.retries:
                    raise self.client.unreachable(exc) from None
            else:
                if response.status_code < 300:
                    return len(data)
                if response.status_code < 500 or attempt == self.client.retries:
                    raise RegistryError(f"the object store refused an upload: HTTP "
                                        f"{response.status_code} {response.text[:200]}")
            self.client.pause(attempt)

    def _store(self) -> httpx.Client:
        """A client for presigned object-store URLs (no hub token)."""
        if self._store_client is None:
            self._store_client = httpx.Client(timeout=self.client.http.timeout)
        return self._store_client

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
        current one), large ones one by one, all in the order asked."""
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

        with ThreadPoolExecutor(1, thread_name_prefix="adapterhub-pull") as pool:
            ahead: Future | None = None
            for index, group in enumerate(plan):
                if not small(group):
                    digest, size = group[0], self._blobs[group[0]][1]
                    yield digest, BlobStream(size, partial(self._stream_large, digest, size,
                                                           report))
                    continue
                current = ahead or pool.submit(self._read_bundle, group, report)
                following = plan[index + 1] if index + 1 < len(plan) else None
                ahead = (pool.submit(self._read_bundle, following, report)
                         if following and small(following) else None)
                yield from current.result()

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
                     report: ProgressCallback) -> bytes:
        """A redirected blob from the object store, :data:`PARTS_IN_FLIGHT` ranges at once
        (each retried on its own), hashed once whole."""
        data = bytearray(size)
        view = memoryview(data)

        def fetch(start: int) -> int:
            end = min(size, start + RANGE_PIECE)
            for attempt in range(self.client.retries + 1):
                try:
                    response = self._store().get(url, headers={"Range":
                                                               f"bytes={start}-{end - 1}"})
                    if response.status_code == 206 and len(response.content) == end - start:
                        view[start:end] = response.content
                        return end - start
                    if response.status_code < 500 and response.status_code != 206:
                        raise RegistryError(f"the object store refused a download: HTTP "
                                            f"{response.status_code} {response.text[:200]}")
                except httpx.TransportError as exc:
                    if attempt == self.client.retries:
                        raise self.client.unreachable(exc) from None
                self.client.pause(attempt)
            raise RegistryError(f"the object store kept failing to send blob {digest}")

        with ThreadPoolExecutor(PARTS_IN_FLIGHT) as pool:
            for got in pool.map(fetch, range(0, size, RANGE_PIECE)):
                report(got)
        return self._checked(digest, bytes(data))

    def _stream_large(self, digest: str, size: int, report: ProgressCallback
                      ) -> Iterator[bytes]:
        """One blob by ``GET``, piece by piece as it arrives, resuming with ``Range`` after a
        dropped connection; hashed as it goes (:class:`IntegrityError` after the last piece).
        A blob the hub redirects to its object store comes whole from :meth:`_read_large`."""
        path = f"/api/v1/repos/{self._repository_of(digest)}/blobs/{digest}"
        h = hashlib.sha256()
        position = failures = 0
        while True:
            headers = {"Range": f"bytes={position}-"} if position else {}
            try:
                with self.client.http.stream("GET", path, headers=headers) as response:
                    if response.status_code in (302, 307):
                        yield self._read_large(digest, size, report)
                        return
                    if response.status_code >= 400:
                        response.read()
                        if response.status_code not in (500, 502, 503, 504):
                            raise self.client.error(response)
                        raise httpx.RemoteProtocolError(f"HTTP {response.status_code}")
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
                raise httpx.RemoteProtocolError("the stream ended early")
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.client.retries:
                    raise self.client.unreachable(exc) from None
                self.client.pause(failures - 1)

    def _read_large(self, digest: str, size: int, report: ProgressCallback) -> bytearray:
        """One blob by ``GET``, resuming with ``Range`` after a dropped connection."""
        path = f"/api/v1/repos/{self._repository_of(digest)}/blobs/{digest}"
        data = bytearray()
        failures = 0
        http, url = self.client.http, path
        while True:
            headers = {"Range": f"bytes={len(data)}-"} if data else {}
            try:
                with http.stream("GET", url, headers=headers) as response:
                    if response.status_code in (302, 307) and http is self.client.http:
                        http, url = self._store(), response.headers["location"]
                        if size > RANGE_PIECE:  # the store serves ranges in parallel
                            return self._read_ranges(url, digest, size, report)
                        continue  # the object store serves it, without the hub's token
                    if response.status_code >= 400:
                        response.read()
                        if response.status_code not in (500, 502, 503, 504):
                            raise self.client.error(response)
                        raise httpx.RemoteProtocolError(f"HTTP {response.status_code}")
                    if data and response.status_code != 206:
                        report(-len(data))
                        data.clear()  # the hub sent the whole blob again
                    for piece in response.iter_bytes(1 << 20):
                        data += piece
                        report(len(piece))
                if len(data) >= size:
                    return self._checked(digest, data)  # (no copy: blobs may be GBs)
                raise httpx.RemoteProtocolError("the stream ended early")
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.client.retries:
                    raise self.client.unreachable(exc) from None
                self.client.pause(failures - 1)
