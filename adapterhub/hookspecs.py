"""The plugin contract: every hook a plugin may implement.

Hooks are *register callbacks*: adapterhub calls the hook with a ``register`` function and the
plugin calls ``register(...)`` once per thing it provides. Core owns validation, duplicate
detection and bookkeeping (which plugin registered what), so signatures stay stable.

A plugin is a module with ``@adapterhub.hookimpl`` functions, exposed through an entry point in
the ``adapterhub`` group::

    [project.entry-points.adapterhub]
    mymethod = "my_package"

Importing that module must be cheap: no top-level ``import torch``. Import heavy modules inside
the hook body. An implementation may accept fewer arguments than the spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import click

hookspec = pluggy.HookspecMarker("adapterhub")
hookimpl = pluggy.HookimplMarker("adapterhub")


@hookspec
def adapterhub_register_methods(register: Callable[[type], None]) -> None:
    """Register adapter methods (training kernel + merge kernel).

    Call ``register(cls)`` for each :class:`adapterhub.AdapterMethod` subclass the plugin
    provides. ``cls.name`` must be lowercase ``[a-z0-9_]+`` and unique across all plugins; it is
    the name users pass to ``attach`` and ``--method`` and the name stored in manifests.

    Called the first time a method is looked up, once per plugin manager.

    :param register: takes one ``AdapterMethod`` subclass; raises ``RegistrationError`` for an
        invalid or duplicate name.
    """


@hookspec
def adapterhub_register_quantizers(register: Callable[[type], None]) -> None:
    """Register base-weight quantizers (for QLoRA-style training and quantized bases).

    Call ``register(cls)`` for each :class:`adapterhub.Quantizer` subclass. ``cls.name``
    must be unique among quantizers.

    :param register: takes one ``Quantizer`` subclass.
    """


@hookspec
def adapterhub_register_merge_strategies(register: Callable[[type], None]) -> None:
    """Register strategies that combine several adapters into one (linear, ties, svd, ...).

    Call ``register(cls)`` for each merge strategy class; ``cls.name`` is what
    ``adapterhub merge --strategy`` accepts and what a merged version's recipe records.

    :param register: takes one strategy class with a unique ``name``.
    """


@hookspec
def adapterhub_register_remotes(register: Callable[[str, Any], None]) -> None:
    """Register remote registry kinds by URL scheme.

    Call ``register(scheme, cls)`` once per scheme, e.g. ``register("http", HttpRemote)``.
    ``push``/``pull``/``remote add`` pick the class whose scheme matches the URL. A scheme may
    be registered once.

    :param register: takes a lowercase scheme (without ``://``) and the remote class.
    """


@hookspec
def adapterhub_register_commands(cli: click.Group) -> None:
    """Add commands to the ``adapterhub`` command line.

    Use ``@cli.command()`` or ``cli.add_command(...)``. Called once when the CLI is built, so
    keep it cheap: import heavy modules inside the command functions.

    :param cli: the root ``click.Group``.
    """
