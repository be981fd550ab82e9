"""One error model: each class has its own stable code and an HTTP status; what the hub sends
comes back to the client as the same class, with the same message and extra fields."""

import json

import httpx

import adapterhub.errors as errors
from adapterhub.hub.errors import error_response
from adapterhub.registry.http_client import HubClient


def every_class():
    found, stack = [], [errors.AdapterHubError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def test_codes_are_unique_and_statuses_are_http_errors():
    classes = every_class()
    codes = [cls.__dict__.get("code") for cls in classes if "code" in cls.__dict__]
    assert len(codes) == len(set(codes)) == len(classes)
    assert all(400 <= cls.status < 600 for cls in classes)
    assert errors.error_class("MissingBlobs") is errors.MissingBlobsError
    assert errors.error_class("NoSuchCode") is None


def test_every_error_survives_the_wire():
    client = HubClient("http://hub.invalid")
    for cls in every_class():
        if cls is errors.PluginLoadError:
            sent = cls("boom", plugin="x")
        elif cls is errors.MissingBlobsError:
            sent = cls("missing\nblobs", digests=["sha256:" + "a" * 64])
        else:
            sent = cls("it failed\r\nX-Injected: 1")
        response = error_response(sent)
        assert response.status_code == sent.status
        assert "\n" not in response.headers["x-error-message"]
        wire = httpx.Response(response.status_code, headers=dict(response.headers),
                              content=response.body)
        got = client.error(wire)
        assert type(got) is cls or (cls is errors.AdapterHubError and
                                    type(got) is errors.AdapterHubError), cls
        assert sent.message in got.message
        assert json.loads(response.body)["code"] == cls.code
        if cls is errors.MissingBlobsError:
            assert got.digests == sent.digests
    client.close()
