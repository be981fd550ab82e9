"""The ``s3`` blob backend: immutable objects keyed by digest in an S3-compatible store.

A registry created with ``--blobs s3://BUCKET/PREFIX`` keeps each complete blob as the object
``PREFIX/blobs/sha256/<2 hex>/<62 hex>`` (the layout of distribution/distribution), written
once after its bytes were hashed and never changed; the database keeps the blob's row (digest,
size, ``codec = "s3"``) and no chunks. Credentials, endpoint and region come from the standard
AWS variables and profiles (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_PROFILE``) through boto3, never from the database.

Reads hash the whole object and raise :class:`IntegrityError` on a mismatch or a missing
object, so bytes altered behind the registry's back are refused, not served.

Clients write a blob's object themselves only through a presigned ``PUT`` that carries the
blob's SHA-256 as the signed ``x-amz-checksum-sha256`` query parameter and the upload's id as
signed object metadata, and only on a store that :attr:`ObjectStore.direct_uploads` has seen
enforce both: then no bytes but the blob's can land at its key (nobody has to read them back),
and the metadata proves that this upload's caller sent them, not someone before (an object
already there says nothing about who has the bytes). Any other store, and clients that cannot
send headers, get parts of a staging object, read back before they become the blob.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from functools import cached_property
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Union

from registry_db.codec import OBJECT_CODEC
from registry_db.errors import IntegrityError, InvalidRequestError, ObjectStoreError

if TYPE_CHECKING:
    from botocore.client import BaseClient

Buffer = Union[bytes, bytearray, memoryview]
CODEC = OBJECT_CODEC  # the Blob.codec of a blob whose bytes are an object, not chunk rows
PART_SIZE = 16 << 20  # multipart part size (S3's minimum part is 5 MiB)
DIRECT_MAX = 1 << 30  # blobs up to this size go in one checksummed PUT (S3 allows 5 GiB)
CHECKSUM_PARAM = "x-amz-checksum-sha256"
UPLOAD_META = "adapterhub-upload"  # object metadata: the upload whose presigned PUT wrote it
READ_SIZE = 8 << 20
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_KEY_RE = re.compile(r"blobs/sha256/([0-9a-f]{2})/([0-9a-f]{62})$")


@dataclass(frozen=True)
class Location:
    """``s3://BUCKET/PREFIX``: where a registry's objects live."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Location:
        match = re.fullmatch(r"s3://([^/]+)/?(.*)", url.strip())
        if match is None or not _BUCKET_RE.fullmatch(match.group(1)):
            raise InvalidRequestError(f"invalid blob location {url[:200]!r}: expected "
                                      f"s3://BUCKET/PREFIX (a valid S3 bucket name)")
        prefix = match.group(2).strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise InvalidRequestError(f"invalid prefix {prefix!r} in {url!r}")
        return cls(match.group(1), prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def root(self) -> str:
        """The key prefix of every blob object (ends with ``/``)."""
        return f"{self.prefix}/blobs/sha256/" if self.prefix else "blobs/sha256/"


def _sha256(data: Buffer) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _client() -> BaseClient:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ObjectStoreError("this registry keeps its blobs in an S3-compatible store, "
                               "and boto3 is not installed",
                               hint="pip install 'adapterhub[s3]'") from None
    # custom endpoints (SeaweedFS, MinIO, Ceph RGW) are addressed by path, as they all accept
    style = "path" if os.environ.get("AWS_ENDPOINT_URL") else "auto"
    config = Config(s3={"addressing_style": style}, retries={"max_attempts": 5,
                                                             "mode": "standard"},
                    max_pool_connections=32, signature_version="s3v4")
    client = boto3.session.Session().client("s3", config=config)
    client.meta.events.register("before-sign.s3.PutObject", _checksum_in_query)
    return client


def _checksum_in_query(request: Any, **kwargs: Any) -> None:
    """Move a presigned ``PUT``'s SHA-256 checksum from the headers into the query string
    before it is signed: clients (``huggingface_hub`` among them) send no extra headers, and
    as a signed query parameter it cannot be dropped without breaking the signature."""
    value = request.headers.get(CHECKSUM_PARAM)
    if value is None or not request.context.get("is_presign_request"):
        return
    del request.headers[CHECKSUM_PARAM]
    separator = "&" if "?" in request.url else "?"
    request.url += f"{separator}{CHECKSUM_PARAM}={urllib.parse.quote(value, safe='')}"


def _checksum(digest: str) -> str:
    """The S3 checksum value (base64 of the raw SHA-256) of a ``sha256:<hex>`` digest."""
    return base64.b64encode(bytes.fromhex(digest.removeprefix("sha256:"))).decode()


def _put_status(url: str, data: bytes, headers: dict[str, str]) -> int:
    """The HTTP status of a ``PUT`` of ``data`` to a presigned URL."""
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _failed(exc: Exception, what: str) -> ObjectStoreError:
    return ObjectStoreError(f"the object store failed to {what}: {exc}")


class ObjectStore:
    """The objects of one registry (boto3 client created on first use; thread-safe)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._s3: BaseClient | None = None

    @property
    def s3(self) -> BaseClient:
        if self._s3 is None:
            self._s3 = _client()
        return self._s3

    def key(self, digest: str) -> str:
        hexdigest = digest.removeprefix("sha256:")
        return f"{self.location.root}{hexdigest[:2]}/{hexdigest[2:]}"

    @staticmethod
    def _errors() -> tuple[type[Exception], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return BotoCoreError, ClientError

    # -- writing ----------------------------------------------------------------------------

    def put(self, digest: str, data: Buffer) -> None:
        """Write the object of ``digest`` (bytes the caller has hashed); multipart above
        :data:`PART_SIZE`. Writing the same bytes again is harmless: objects are immutable by
        content."""
        self._upload(digest, io.BytesIO(data))

    def put_stream(self, digest: str, pieces: Iterable[bytes]) -> None:
        """:meth:`put` from an iterable of byte strings (a blob larger than memory)."""
        self._upload(digest, io.BufferedReader(_IterReader(pieces), PART_SIZE))

    def _upload(self, digest: str, source: io.IOBase) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                max_concurrency=8)
        try:
            self.s3.upload_fileobj(source, self.location.bucket, self.key(digest),
                                   Config=config)
        except self._errors() as exc:
            raise _failed(exc, f"store blob {digest}") from None

    def delete(self, digests: Iterable[str]) -> None:
        """Remove the objects of ``digests`` (absent ones are fine)."""
        keys = [{"Key": self.key(d)} for d in digests]
        try:
            for start in range(0, len(keys), 1000):
                self.s3.delete_objects(Bucket=self.location.bucket,
                                       Delete={"Objects": keys[start:start + 1000],
                                               "Quiet": True})
        except self._errors() as exc:
            raise _failed(exc, "delete objects") from None

    # -- presigned uploads ------------------------------------------------------------------

    @cached_property
    def direct_uploads(self) -> bool:
        """Whether clients may write blob objects themselves (see the module docstring): a
        probe ``PUT`` through a presigned URL was refused with other bytes than its signed
        checksum, without the checksum, and without the signed upload header, and accepted
        and recorded with all three. Probed once per process, on a throwaway key."""
        key = f"{self.location.prefix}/probe/{secrets.token_hex(16)}".lstrip("/")
        body, marker = b"adapterhub probe", secrets.token_hex(8)
        url, headers = self._presign_put(key, _checksum(_sha256(body)), marker, 300)
        parts = urllib.parse.urlsplit(url)
        stripped = parts._replace(query=urllib.parse.urlencode(
            [(k, v) for k, v in urllib.parse.parse_qsl(parts.query)
             if k != CHECKSUM_PARAM])).geturl()
        try:
            refused = (_put_status(url, b"other bytes", headers) == 400
                       and _put_status(stripped, b"other bytes", headers) in (400, 403)
                       and _put_status(url, body, {}) in (400, 403))
            return (refused and _put_status(url, body, headers) == 200
                    and self._uploader(key) == (len(body), marker))
        except OSError as exc:
            raise _failed(exc, "answer a presigned upload") from None
        finally:
            try:
                self.s3.delete_object(Bucket=self.location.bucket, Key=key)
            except self._errors():
                pass  # (nothing was written, or the store refuses deletes: not ours to fix)

    def presign_put(self, digest: str, upload_id: str,
                    expires: int) -> tuple[str, dict[str, str]]:
        """A presigned ``PUT`` of the blob's object, and the headers to send with it: the
        store takes only the blob's bytes, and records ``upload_id`` on the object (use only
        when :attr:`direct_uploads`)."""
        return self._presign_put(self.key(digest), _checksum(digest), upload_id, expires)

    def _presign_put(self, key: str, checksum: str, upload_id: str,
                     expires: int) -> tuple[str, dict[str, str]]:
        url = self.s3.generate_presigned_url(
            "put_object", ExpiresIn=expires,
            Params={"Bucket": self.location.bucket, "Key": key, "ChecksumSHA256": checksum,
                    "Metadata": {UPLOAD_META: upload_id}})
        return url, {f"x-amz-meta-{UPLOAD_META}": upload_id}

    def uploader(self, digest: str) -> tuple[int, str | None] | None:
        """The blob object's size and the upload that last wrote it (None if no presigned
        upload did); None when there is no object."""
        return self._uploader(self.key(digest))

    def _uploader(self, key: str) -> tuple[int, str | None] | None:
        try:
            head = self.s3.head_object(Bucket=self.location.bucket, Key=key)
        except self._errors() as exc:
            if _status(exc) == 404:
                return None
            raise _failed(exc, "look up an uploaded object") from None
        return int(head["ContentLength"]), head.get("Metadata", {}).get(UPLOAD_META)

    # staging: parts go to a staging object, the hub verifies and copies it

    def staging_key(self, upload_id: str) -> str:
        return f"{self.location.prefix}/uploads/{upload_id}".lstrip("/")

    def begin_multipart(self, upload_id: str) -> str:
        """Open a multipart upload of the staging object; its S3 upload id."""
        try:
            return self.s3.create_multipart_upload(Bucket=self.location.bucket,
                                                   Key=self.staging_key(upload_id))["UploadId"]
        except self._errors() as exc:
            raise _failed(exc, "open a multipart upload") from None

    def presign_parts(self, upload_id: str, multipart: str, count: int,
                      expires: int) -> tuple[str, ...]:
        """Presigned ``PUT`` URLs for parts ``1 … count`` (chunk ``i`` is part ``i + 1``)."""
        return tuple(self.s3.generate_presigned_url(
            "upload_part", ExpiresIn=expires,
            Params={"Bucket": self.location.bucket, "Key": self.staging_key(upload_id),
                    "UploadId": multipart, "PartNumber": i + 1}) for i in range(count))

    def parts(self, upload_id: str, multipart: str) -> list[dict[str, Any]] | None:
        """The parts received so far (``PartNumber``, ``ETag``, ``Size``); None when the
        multipart upload is gone (finished or aborted by a hub that died before recording
        it)."""
        found: list[dict[str, Any]] = []
        try:
            pages = self.s3.get_paginator("list_parts").paginate(
                Bucket=self.location.bucket, Key=self.staging_key(upload_id),
                UploadId=multipart)
            for page in pages:
                found += page.get("Parts", [])
        except self._errors() as exc:
            if _status(exc) == 404:
                return None
            raise _failed(exc, "list the parts of an upload") from None
        return found

    def promote(self, upload_id: str, multipart: str, digest: str, size: int) -> str | None:
        """Complete the staging object, read it back hashing every byte, and copy it to the
        blob's key if it matches. Returns None on success, else what the bytes hash to. The
        staging object is removed either way."""
        staging = {"Bucket": self.location.bucket, "Key": self.staging_key(upload_id)}
        parts = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]}
                 for p in sorted(self.parts(upload_id, multipart) or [],
                                 key=lambda p: p["PartNumber"])]
        try:
            self.s3.complete_multipart_upload(**staging, UploadId=multipart,
                                              MultipartUpload={"Parts": parts})
            h = hashlib.sha256()
            position = 0
            body = self.s3.get_object(**staging)["Body"]
            for piece in body.iter_chunks(READ_SIZE):
                h.update(piece)
                position += len(piece)
            actual = "sha256:" + h.hexdigest()
            if position == size and actual == digest:
                self.s3.copy(staging, self.location.bucket, self.key(digest))
                return None
            return f"{actual} ({position} bytes)"
        except self._errors() as exc:
            raise _failed(exc, f"verify the upload of blob {digest}") from None
        finally:
            self.abort(upload_id, multipart)

    def abort(self, upload_id: str, multipart: str) -> None:
        """Drop a staging upload and object (absent ones are fine)."""
        key = self.staging_key(upload_id)
        for call in (lambda: self.s3.abort_multipart_upload(
                         Bucket=self.location.bucket, Key=key, UploadId=multipart),
                     lambda: self.s3.delete_object(Bucket=self.location.bucket, Key=key)):
            try:
                call()
            except self._errors() as exc:
                if _status(exc) != 404:
                    raise _failed(exc, "remove a staging upload") from None

    def staged(self) -> Iterator[tuple[str, str, datetime]]:
        """``(upload id, S3 upload id, initiated)`` of every open staging upload."""
        root = self.staging_key("")
        try:
            pages = self.s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.location.bucket, Prefix=root)
            for page in pages:
                for item in page.get("Uploads", ()):
                    yield item["Key"][len(root):], item["UploadId"], item["Initiated"]
        except self._errors() as exc:
            raise _failed(exc, f"list uploads in {self.location}") from None

    def presign_get(self, digest: str, expires: int) -> str:
        """A presigned ``GET`` URL of the blob's object."""
        return self._presign_get(self.key(digest), expires)

    def _presign_get(self, key: str, expires: int) -> str:
        return self.s3.generate_presigned_url(
            "get_object", ExpiresIn=expires, Params={"Bucket": self.location.bucket, "Key": key})

    def rendered_url(self, sha256: str, size: int, pieces: Callable[[], Iterable[bytes]],
                     expires: int) -> str:
        """A presigned ``GET`` URL of a file the hub renders (a PEFT safetensors file
        assembled from tensor blobs), kept as the object ``PREFIX/rendered/sha256/…`` of its
        sha256: written from ``pieces()`` the first time, a redirect every time. These
        objects are a cache; deleting them is safe."""
        key = f"{self.location.prefix}/rendered/sha256/{sha256[:2]}/{sha256[2:]}".lstrip("/")
        try:
            head = self.s3.head_object(Bucket=self.location.bucket, Key=key)
            stored = int(head["ContentLength"])
        except self._errors() as exc:
            if _status(exc) != 404:
                raise _failed(exc, f"look up rendered file {sha256}") from None
            stored = None
        if stored != size:
            source = io.BufferedReader(_IterReader(pieces()), PART_SIZE)
            try:
                self.s3.upload_fileobj(source, self.location.bucket, key)
            except self._errors() as exc:
                raise _failed(exc, f"store rendered file {sha256}") from None
        return self._presign_get(key, expires)

    # -- reading ----------------------------------------------------------------------------

    def size(self, digest: str) -> int | None:
        """The object's size, or None when it is missing."""
        try:
            head = self.s3.head_object(Bucket=self.location.bucket, Key=self.key(digest))
        except self._errors() as exc:
            if _status(exc) == 404:
                return None
            raise _failed(exc, f"look up blob {digest}") from None
        return int(head["ContentLength"])

    def iter(self, digest: str, size: int, *, offset: int = 0) -> Iterator[bytes]:
        """The object's bytes from ``offset``. The whole object is hashed (the bytes before
        ``offset`` too); a missing object, a wrong size or a mismatch raises
        :class:`IntegrityError` (after the last chunk for a mismatch)."""
        try:
            body = self.s3.get_object(Bucket=self.location.bucket,
                                      Key=self.key(digest))["Body"]
        except self._errors() as exc:
            if _status(exc) == 404:
                raise IntegrityError(f"blob {digest} is missing from the object store "
                                     f"{self.location}") from None
            raise _failed(exc, f"read blob {digest}") from None
        h = hashlib.sha256()
        position = 0
        try:
            for piece in body.iter_chunks(READ_SIZE):
                h.update(piece)
                end = position + len(piece)
                if end > offset:
                    yield piece[max(0, offset - position):]
                position = end
        except self._errors() as exc:
            raise _failed(exc, f"read blob {digest}") from None
        finally:
            body.close()
        actual = "sha256:" + h.hexdigest()
        if position != size or actual != digest:
            raise IntegrityError(f"blob {digest} is corrupt in the object store: its "
                                 f"{position} bytes hash to {actual}")

    def read(self, digest: str, size: int) -> bytearray:
        """The whole object, verified."""
        return bytearray().join(self.iter(digest, size))

    def stored(self) -> Iterator[tuple[str, int, datetime]]:
        """``(digest, size, last modified)`` of every blob object under the prefix."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.location.root)
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    match = _KEY_RE.search(item["Key"])
                    if match:
                        yield ("sha256:" + "".join(match.groups()), int(item["Size"]),
                               item["LastModified"])
        except self._errors() as exc:
            raise _failed(exc, f"list {self.location}") from None

    def check_bucket(self) -> None:
        """Raise :class:`ObjectStoreError` unless the bucket can be reached."""
        try:
            self.s3.head_bucket(Bucket=self.location.bucket)
        except self._errors() as exc:
            raise _failed(exc, f"reach bucket {self.location.bucket!r}") from None


class _IterReader(io.RawIOBase):
    """A read-only file over an iterable of byte strings."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._rest = memoryview(piece)
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _status(exc: Any) -> int | None:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    return 404 if code in ("404", "NoSuchKey", "NotFound", "NoSuchUpload") else status
