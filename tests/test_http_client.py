"""The hub client on the standard library's ``http.client``: TLS verified against the
system's CAs, ``HTTP_PROXY``/``NO_PROXY`` honoured as httpx honoured them, keep-alive
connections reused and silently replaced when the hub closed them."""

import http.server
import ssl
import threading
import urllib.request

import pytest
from helpers.hub_server import HubServer

from adapterhub.errors import RegistryError
from adapterhub.registry.http_client import HubClient, _proxy_for, _tls_context

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY",
                   "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def no_proxy(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class Forwarder(http.server.BaseHTTPRequestHandler):
    """A real forwarding HTTP proxy (absolute request URIs), recording what it forwarded."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self.seen.append(self.path)
        request = urllib.request.Request(self.path, headers={
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request) as r:
            body = r.read()
            self.send_response(r.status)
            for key, value in r.headers.items():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_https_hubs_verify_certificates_and_host_names():
    context = _tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_proxy_is_used_unless_no_proxy_exempts_the_hub(tmp_path, no_proxy, monkeypatch):
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forwarder)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        with HubServer(str(tmp_path / "hub.db"), auth="read-public") as hub:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
            assert _proxy_for(hub.url) == f"http://127.0.0.1:{proxy.server_port}"
            with HubClient(hub.url, token="") as client:
                assert client.get_json("/health")["status"] == "ok"
            assert Forwarder.seen == [f"{hub.url}/health"]  # through the proxy, absolute URI
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            assert _proxy_for(hub.url) is None
            with HubClient(hub.url, token="") as client:
                assert client.get_json("/health")["status"] == "ok"
            assert len(Forwarder.seen) == 1  # straight to the hub
    finally:
        proxy.shutdown()


class OneAnswerPerConnection(http.server.BaseHTTPRequestHandler):
    """Answers keep-alive requests but closes every connection after one answer, as a hub
    does with an idle keep-alive connection."""

    protocol_version = "HTTP/1.1"
    connections: set[int] = set()

    def do_GET(self) -> None:  # noqa: N802
        self.connections.add(self.client_address[1])
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def test_a_closed_keep_alive_connection_is_replaced_without_a_retry_pause(no_proxy):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OneAnswerPerConnection)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with HubClient(f"http://127.0.0.1:{server.server_port}", token="") as client:
            client.pause = lambda attempt: pytest.fail("a closed idle connection is no failure")
            for _ in range(3):
                assert client.get_json("/health") == {"status": "ok"}
        assert len(OneAnswerPerConnection.connections) == 3
    finally:
        server.shutdown()


def test_an_unreachable_hub_is_a_clear_error_after_the_retries(no_proxy):
    with HubClient("http://127.0.0.1:9", token="", retries=1, backoff=0) as client:
        with pytest.raises(RegistryError, match="cannot reach the hub at .* after 2 attempts"):
            client.get_json("/health")
