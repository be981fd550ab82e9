"""The registry client layer: :class:`Registry` (one registry database, and the remotes it
pushes to and pulls from), the remote kinds, the one adapter resolver, the HTTP client of a
hub, credentials and CI labels. Imports no torch until a call needs it."""

from adapterhub.registry.registry import (DB_ENV, HOME_ENV, Registry, default_url, home,
                                          open_registry)

__all__ = ["DB_ENV", "HOME_ENV", "Registry", "default_url", "home", "open_registry"]
