"""How the hub client sets up TLS: verified as httpx does by default, except that a plain
``http://`` hub (no proxy) skips loading the CA bundle and fails closed should it meet TLS."""

import ssl

import pytest

from adapterhub.registry.http_client import HubClient, _tls_context

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "ALL_PROXY")


@pytest.fixture
def no_proxy(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_a_plain_http_hub_gets_a_context_that_trusts_no_ca(no_proxy):
    context = _tls_context("http://127.0.0.1:8000")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs() == []  # nothing loaded, so any certificate is refused
    HubClient("http://127.0.0.1:8000", token="t").close()


def test_https_hubs_and_proxies_keep_httpx_verification(no_proxy, monkeypatch):
    assert _tls_context("https://hub.example") is True
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.example:3128")
    assert _tls_context("http://127.0.0.1:8000") is True  # the proxy may speak TLS
