"""An HTTP client for ``adapterhub serve``: bearer token, retries, errors as adapterhub errors.

Connection failures and 5xx answers are retried with exponential backoff (0.25 s, 0.5 s, 1 s,
… with jitter); every request the client sends is safe to repeat (uploads are content-
addressed, commits of the same manifest return the same version). A refusal becomes the
matching :mod:`adapterhub.errors` class, with the hub's message and hint.
"""

from __future__ import annotations

import random
import ssl
import time
import urllib.request
from typing import Any

import httpx

from adapterhub import __version__
from adapterhub.errors import (AdapterHubError, AdapterNotFoundError, AuthenticationError,
                               PermissionDeniedError, RegistryError, error_class)

RETRY_STATUS = {500, 502, 503, 504}
#: for answers without an adapterhub error code (a proxy in front of the hub)
_BY_STATUS = {401: AuthenticationError, 403: PermissionDeniedError, 404: AdapterNotFoundError}


class HubClient:
    """One hub at ``url``; ``token`` defaults to
    :func:`adapterhub.registry.credentials.token_for`."""

    def __init__(self, url: str, *, token: str | None = None, retries: int = 6,
                 backoff: float = 0.25, timeout: float = 120.0) -> None:
        from adapterhub.registry.credentials import hub_key, token_for

        hub_key(url)  # validates the URL
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        token = token if token is not None else token_for(url)
        headers = {"User-Agent": f"adapterhub/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, follow_redirects=False,
                                 timeout=httpx.Timeout(timeout, connect=10.0),
                                 verify=_tls_context(self.url))

    def close(self) -> None:
        self.http.close()

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

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request, retrying connection errors and 5xx; raise on a refusal."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
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

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs).json()

    def error(self, response: httpx.Response) -> AdapterHubError:
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


def _tls_context(url: str) -> ssl.SSLContext | bool:
    """How the client verifies TLS: as httpx does by default (``True``: the system's or
    certifi's CAs) unless the hub is plain ``http://`` and no proxy is configured. Such a
    client never speaks TLS (it follows no redirects), so it gets a context that still
    requires a valid certificate but trusts no CA: should it ever meet TLS it fails closed,
    and the ~30 ms httpx spends loading the CA bundle is not paid."""
    if not url.startswith("http://") or urllib.request.getproxies():
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    except ValueError:
        pass
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()
