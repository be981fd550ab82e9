import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own ADAPTERHUB_HOME, so nothing touches the user's registry."""
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("ADAPTERHUB_DEBUG", raising=False)
    monkeypatch.delenv("ADAPTERHUB_PLUGINS", raising=False)


@pytest.fixture(autouse=True)
def _no_registry_env(monkeypatch):
    """Tests choose their registry explicitly; never the caller's ADAPTERHUB_DB."""
    monkeypatch.delenv("ADAPTERHUB_DB", raising=False)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (see tests/pg_server.py); fails loudly when
    the binaries are missing."""
    from helpers.pg_server import PostgresServer

    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    """A fresh, empty registry on each backend: a SQLite file, or a new PostgreSQL database
    (dropped afterwards)."""
    if request.param == "sqlite":
        yield str(tmp_path / "registry.db")
        return
    import uuid

    server = request.getfixturevalue("postgres")
    name = f"t{uuid.uuid4().hex[:16]}"
    yield server.create_database(name)
    server.drop_database(name)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke the CLI in a temp working directory; asserts the exit code (default 0)."""
    from click.testing import CliRunner

    from adapterhub.cli import cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args, code=0):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, (result.output, result.stderr)
        return result

    return invoke


def _seaweed(open: bool):
    from helpers.s3_server import SeaweedServer

    server = SeaweedServer(open=open)
    server.start()
    return server


@pytest.fixture(scope="session")
def seaweed():
    """A real S3-compatible server (SeaweedFS ``weed mini``, checking signatures) for the
    session (see tests/helpers/s3_server.py); fails loudly when the binary is missing."""
    server = _seaweed(open=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def open_seaweed():
    """A SeaweedFS that accepts unsigned requests (no access control): presigned checksums
    protect nothing there, so the registry verifies uploads by reading them back."""
    server = _seaweed(open=True)
    yield server
    server.stop()


def _bucket_env(server, monkeypatch) -> str:
    import uuid

    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    server.create_bucket(bucket)
    return f"s3://{bucket}/reg"


@pytest.fixture
def s3_env(seaweed, monkeypatch):
    """The standard AWS variables pointing at the session's SeaweedFS, and a fresh bucket:
    yields ``s3://BUCKET/reg``."""
    return _bucket_env(seaweed, monkeypatch)


@pytest.fixture
def open_s3_env(open_seaweed, monkeypatch):
    """:func:`s3_env` on the SeaweedFS without access control."""
    return _bucket_env(open_seaweed, monkeypatch)


def _s3_hub(registry_url: str, location: str, log_path):
    """A hub process on a registry whose blobs live at ``location``, with tokens
    ``writer``/``reader`` (team), ``outsider`` (write:other) and ``admin``."""
    from helpers.hub_server import HubProcess
    from helpers.registry_helpers import LOCAL

    from registry_db import RegistryService

    with RegistryService(registry_url) as service:
        service.choose_blob_backend(location, caller=LOCAL)
        tokens = {"writer": service.tokens.create(["write:team"])[0],
                  "reader": service.tokens.create(["read:team"])[0],
                  "outsider": service.tokens.create(["write:other"])[0],
                  "admin": service.tokens.create(["admin"])[0]}
    hub = HubProcess(registry_url, log_path=log_path)
    hub.tokens = tokens
    return hub


@pytest.fixture
def s3_hub(registry_url, s3_env, tmp_path):
    """A hub on a store that checks signatures and presigned checksums."""
    with _s3_hub(registry_url, s3_env, tmp_path / "hub.log") as hub:
        yield hub


@pytest.fixture
def open_s3_hub(registry_url, open_s3_env, tmp_path):
    """A hub on a store without access control: uploads go to staging objects."""
    with _s3_hub(registry_url, open_s3_env, tmp_path / "hub.log") as hub:
        yield hub
