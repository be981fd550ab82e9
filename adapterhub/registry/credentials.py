"""Tokens a client sends to hubs: ``ADAPTERHUB_TOKEN``, or the one ``adapterhub login`` saved.

Saved tokens live in ``$ADAPTERHUB_HOME/tokens.json`` (mode 0600), one per hub, keyed by
``scheme://host:port``, so a token is only ever sent to the hub it was saved for.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

from adapterhub.errors import RegistryError

TOKEN_ENV = "ADAPTERHUB_TOKEN"


def hub_key(url: str) -> str:
    """``https://Hub.Example:443/x`` → ``https://hub.example:443``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"{url!r} is not a hub URL (http:// or https://)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"


def _path():
    from adapterhub.registry import home

    return home() / "tokens.json"


def _load() -> dict[str, str]:
    try:
        data = json.loads(_path().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read saved tokens {_path()}: {exc}",
                            hint="Delete the file and run 'adapterhub login URL' again") from None
    return data if isinstance(data, dict) else {}


def token_for(url: str) -> str | None:
    """The token to send to the hub at ``url``: ``$ADAPTERHUB_TOKEN``, else the saved one."""
    return os.environ.get(TOKEN_ENV) or _load().get(hub_key(url))


def save_token(url: str, token: str) -> str:
    """Remember ``token`` for the hub at ``url`` (the file is created with mode 0600)."""
    return _write({**_load(), hub_key(url): token})


def forget_token(url: str) -> bool:
    tokens = _load()
    if tokens.pop(hub_key(url), None) is None:
        return False
    _write(tokens)
    return True


def _write(tokens: dict[str, str]) -> str:
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(tokens, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
    os.chmod(path, 0o600)
    return str(path)
