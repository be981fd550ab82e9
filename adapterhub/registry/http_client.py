"""An HTTP client for ``adapterhub serve``: bearer token, retries, errors as adapterhub errors.

Connection failures and 5xx answers are retried with exponential backoff (0.25 s, 0.5 s, 1 s,
… with jitter); every request the client sends is safe to repeat (uploads are content-
addressed, commits of the same manifest return the same version). A refusal becomes the
matching :mod:`adapterhub.errors` class, with the hub's message and hint.

It speaks HTTP/1.1 with the standard library's :mod:`http.client`, one keep-alive connection
per thread: importing httpx (with the console libraries its command line brings) took about
0.1 s, as long as the rest of a small pull's start-up (``benchmarks/pull.py``). Like httpx it
honours ``HTTP(S)_PROXY``/``NO_PROXY`` and verifies TLS against the system's CAs
(``SSL_CERT_FILE``/``SSL_CERT_DIR`` choose others); it follows no redirects.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json as jsonlib
import random
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from email.message import Message
from typing import Any

from adapterhub import __version__
from adapterhub.errors import (AdapterHubError, AdapterNotFoundError, AuthenticationError,
                               PermissionDeniedError, RegistryError, error_class)

RETRY_STATUS = {500, 502, 503, 504}
#: for answers without an adapterhub error code (a proxy in front of the hub)
_BY_STATUS = {401: AuthenticationError, 403: PermissionDeniedError, 404: AdapterNotFoundError}
#: what a failed connection raises (retried)
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class Response:
    """A hub's answer. From :meth:`HubClient.request` its body is read (``content``); from
    :meth:`HubClient.stream` it is read as it arrives (:meth:`iter_bytes`)."""

    def __init__(self, raw: http.client.HTTPResponse) -> None:
        self._raw = raw
        self.status_code: int = raw.status
        self.reason_phrase: str = raw.reason
        self.headers: Message = raw.headers
        self._content: bytes | None = None

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = self._raw.read()
        return self._content

    def read(self) -> bytes:
        return self.content

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def iter_bytes(self, size: int) -> Iterator[bytes]:
        """The body in pieces of up to ``size`` bytes as they arrive;
        :class:`http.client.IncompleteRead` if the connection ends early."""
        while piece := self._raw.read1(size):
            yield piece
        if self._raw.length:  # (a chunked answer that ends early raises in read1)
            raise http.client.IncompleteRead(b"", self._raw.length)

    @property
    def finished(self) -> bool:
        """Whether the whole body was read (the connection can carry the next request)."""
        return self._raw.isclosed() or self._raw.length == 0


class HubClient:
    """One hub at ``url``; ``token`` defaults to
    :func:`adapterhub.registry.credentials.token_for`. Safe to share between threads."""

    def __init__(self, url: str, *, token: str | None = None, retries: int = 6,
                 backoff: float = 0.25, timeout: float = 120.0) -> None:
        from adapterhub.registry.credentials import hub_key, token_for

        hub_key(url)  # validates the URL
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        token = token if token is not None else token_for(url)
        self.headers = {"User-Agent": f"adapterhub/{__version__}"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        parts = urllib.parse.urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._prefix = parts.path
        self._proxy = _proxy_for(self.url)
        self._proxy_auth = _proxy_auth(self._proxy)
        self._local = threading.local()
        self._open: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for connection in self._open:
                connection.close()
            self._open.clear()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pause(self, attempt: int) -> None:
        time.sleep(self.backoff * 2 ** attempt * (0.5 + random.random()))

    def unreachable(self, exc: Exception) -> RegistryError:
        return RegistryError(f"cannot reach the hub at {self.url} after {self.retries + 1} "
                             f"attempts: {type(exc).__name__}: {exc}",
                             hint="Check that 'adapterhub serve' runs there and the URL is right")

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None, content: bytes | memoryview | Iterable[bytes] | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """Send a request, retrying connection errors and 5xx; raise on a refusal. The body
        is ``json`` (encoded) or ``content``."""
        headers = dict(headers or {})
        if json is not None:
            content = jsonlib.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                response = self._send(method, path, params, content, headers)
                response.content  # read whole: the connection is free for the next request
            except TRANSPORT_ERRORS as exc:
                self._drop()
                last = exc
            else:
                if response.status_code not in RETRY_STATUS or attempt == self.retries:
                    if response.status_code >= 400:
                        raise self.error(response)
                    return response
                last = RegistryError(f"HTTP {response.status_code}: {_message(response)}")
            if attempt < self.retries:
                self.pause(attempt)
        raise self.unreachable(last)

    @contextlib.contextmanager
    def stream(self, method: str, path: str, *, headers: dict[str, str] | None = None
               ) -> Iterator[Response]:
        """One request whose answer is read as it arrives (not retried: the caller resumes
        where it stopped); :data:`TRANSPORT_ERRORS` if the connection fails."""
        try:
            response = self._send(method, path, None, None, dict(headers or {}))
        except TRANSPORT_ERRORS:
            self._drop()
            raise
        try:
            yield response
        except BaseException:
            self._drop()  # the rest of the body is not read: the connection cannot be reused
            raise
        if not response.finished:
            self._drop()

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs).json()

    def error(self, response: Any) -> AdapterHubError:
        """The adapterhub error for a refused request: the class the hub's error code names
        (see :func:`adapterhub.errors.error_class`), with the hub's message and hint."""
        try:
            body = response.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        code = body.get("code") or response.headers.get("x-error-code")
        cls = error_class(code) or _BY_STATUS.get(response.status_code, RegistryError)
        hint = body.get("hint") if isinstance(body.get("hint"), str) else None
        if cls is AuthenticationError:
            hint = f"Set ADAPTERHUB_TOKEN or run 'adapterhub login {self.url}'"
        return cls.from_wire(f"{self.url}: {_message(response)}", hint, body)

    # -- connections ----------------------------------------------------------------------

    def _send(self, method: str, path: str, params: dict[str, Any] | None,
              body: bytes | memoryview | Iterable[bytes] | None,
              headers: dict[str, str]) -> Response:
        target = self._prefix + path
        if params:
            target += "?" + urllib.parse.urlencode(params)
        connection = self._connection()
        if self._proxy is not None and not self._https:  # a plain-HTTP hub through a proxy
            target = f"http://{self._host}{f':{self._port}' if self._port else ''}{target}"
            headers = {**self._proxy_auth, **headers}
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
            body = b"".join(body)
        headers = {**self.headers, **headers}
        reused = connection.sock is not None
        try:
            connection.request(method, target, body=body, headers=headers)
            return Response(connection.getresponse())
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
        self._drop()  # a keep-alive connection the hub had closed: once more, on a new one
        connection = self._connection()
        connection.request(method, target, body=body, headers=headers)
        return Response(connection.getresponse())

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._new_connection()
            with self._lock:
                self._open.append(connection)
        return connection

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._proxy is None:
            if self._https:
                return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                   context=_tls_context())
            return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        proxy = urllib.parse.urlsplit(self._proxy)
        if self._https:  # a tunnel through the proxy; TLS with the hub inside it
            connection = http.client.HTTPSConnection(proxy.hostname, proxy.port,
                                                     timeout=self.timeout,
                                                     context=_tls_context())
            connection.set_tunnel(self._host, self._port, headers=self._proxy_auth)
            return connection
        if proxy.scheme == "https":
            return http.client.HTTPSConnection(proxy.hostname, proxy.port,
                                               timeout=self.timeout, context=_tls_context())
        return http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=self.timeout)

    def _drop(self) -> None:
        """Close this thread's connection (after a failure); the next request reconnects."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
            with self._lock:
                if connection in self._open:
                    self._open.remove(connection)


def _proxy_for(url: str) -> str | None:
    """The proxy ``HTTP(S)_PROXY``/``ALL_PROXY`` name for ``url``, unless ``NO_PROXY``
    exempts its host."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _proxy_auth(proxy: str | None) -> dict[str, str]:
    """The ``Proxy-Authorization`` header for credentials in a proxy's URL."""
    parts = urllib.parse.urlsplit(proxy or "")
    if not parts.username:
        return {}
    secret = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


def _tls_context() -> ssl.SSLContext:
    """Certificates and host names verified against the system's CAs."""
    return ssl.create_default_context()


def _message(response: Any) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    except ValueError:
        pass
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()
