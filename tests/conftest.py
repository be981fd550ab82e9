import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own ADAPTERHUB_HOME, so nothing touches the user's registry."""
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("ADAPTERHUB_DEBUG", raising=False)
    monkeypatch.delenv("ADAPTERHUB_PLUGINS", raising=False)
