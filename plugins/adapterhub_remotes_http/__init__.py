"""The ``http``/``https`` remote: push to and pull from an ``adapterhub serve`` hub.

Registered through the ``adapterhub_register_remotes`` hook like any third-party remote kind;
the transfer logic is in :mod:`adapterhub_remotes_http.remote`.
"""

from adapterhub import hookimpl


@hookimpl
def adapterhub_register_remotes(register):
    from adapterhub_remotes_http.remote import HttpRemote

    register("http", HttpRemote)
    register("https", HttpRemote)
