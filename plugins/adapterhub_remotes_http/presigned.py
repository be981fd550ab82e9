"""Transfers to and from presigned object-store URLs (no hub token), on the standard library's
``http.client``.

Object bytes are the bulk of a push or pull through a hub on an object store, and a response
body read with ``readinto`` lands straight in the caller's buffer: on loopback, a 64 MiB
object arrives in about half the time httpx takes (``benchmarks/objectstore.py``). Each
thread keeps one keep-alive connection per host; a failed request drops it, and the caller
retries.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Iterable

from adapterhub.errors import RegistryError
from adapterhub.plugin_api import Buffer

TIMEOUT_S = 120.0


class PresignedClient:
    """``get_into`` and ``put`` of presigned URLs; ``OSError`` and
    ``http.client.HTTPException`` mean the connection failed or the store answered 5xx
    (retry); :class:`RegistryError`, that the store refused."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _connection(self, url: str) -> tuple[http.client.HTTPConnection, str]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"the hub handed out an invalid object-store URL {url[:80]!r}")
        key = (parts.scheme, parts.hostname, parts.port)
        pool = self._local.__dict__.setdefault("connections", {})
        connection = pool.get(key)
        if connection is None:
            cls = (http.client.HTTPSConnection if parts.scheme == "https"
                   else http.client.HTTPConnection)
            connection = pool[key] = cls(parts.hostname, parts.port, timeout=TIMEOUT_S)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        return connection, target

    def _send(self, method: str, url: str, body: Iterable[Buffer] | None = None,
              headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        connection, target = self._connection(url)
        try:
            connection.request(method, target, body=body, headers=headers or {})
            return connection.getresponse()
        except BaseException:
            connection.close()  # reconnects on the next request
            raise

    def get_into(self, url: str, start: int, into: memoryview) -> None:
        """Bytes ``start … start + len(into) - 1`` of the object, read into ``into``."""
        end = start + len(into) - 1
        response = self._send("GET", url, headers={"Range": f"bytes={start}-{end}"})
        try:
            if response.status not in (200, 206) or (response.status == 200 and start):
                raise self._refused(response, "download")
            filled = 0
            while filled < len(into):
                got = response.readinto(into[filled:])
                if not got:
                    raise http.client.IncompleteRead(bytes(), len(into) - filled)
                filled += got
            if response.status == 200 and response.read(1):  # a store that ignores Range
                raise RegistryError("the object store sent more bytes than the blob has")
        except BaseException:
            response.close()
            self._connection(url)[0].close()
            raise

    def put(self, url: str, pieces: Iterable[Buffer], size: int,
            headers: dict[str, str]) -> None:
        """``size`` bytes, the ``pieces`` one after another, as the body of one ``PUT``
        with ``headers`` (sent as they come: a blob need not be in memory)."""
        response = self._send("PUT", url, body=pieces,
                              headers={**headers, "Content-Length": str(size)})
        if response.status >= 300:
            raise self._refused(response, "upload")
        response.read()

    @staticmethod
    def _refused(response: http.client.HTTPResponse, what: str) -> Exception:
        text = response.read(2000).decode("utf-8", "replace")
        if response.status >= 500:
            return http.client.HTTPException(f"HTTP {response.status} {text[:200]}")
        return RegistryError(f"the object store refused a {what}: HTTP {response.status} "
                          f"{text[:200]}")
