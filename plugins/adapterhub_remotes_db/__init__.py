"""Direct remotes: another registry database by path, ``sqlite:///…`` or ``postgresql://…``.

Registered through the ``adapterhub_register_remotes`` hook exactly like a third-party remote
kind (``http``/``hf`` come from the hub plugins).
"""

from adapterhub import hookimpl


@hookimpl
def adapterhub_register_remotes(register):
    from adapterhub.plugin_api import DatabaseRemote

    register("sqlite", DatabaseRemote)
    register("postgresql", DatabaseRemote)
