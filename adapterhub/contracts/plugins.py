"""Finding plugins and what they register.

``get_plugin_manager()`` builds a fresh manager (tests make their own); ``plugin_manager()``
is the process-wide one the CLI and API use. Each entry point of the ``adapterhub`` group is
loaded on its own: a plugin that fails to import or to register is recorded with its error and
the others keep working. ``ADAPTERHUB_PLUGINS=a,b`` loads only the named entry points (an empty
value loads none).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import pluggy

from adapterhub import hookspecs
from adapterhub.contracts.config import NAME_RE
from adapterhub.contracts.method import AdapterMethod
from adapterhub.contracts.quantizer import Quantizer
from adapterhub.contracts.strategy import MergeStrategy
from adapterhub.errors import (PluginLoadError, RegistrationError, UnknownMethodError,
                               UnknownPluginError, UnknownQuantizerError, UnknownRemoteError,
                               UnknownStrategyError)

if TYPE_CHECKING:
    import click

ENTRY_POINT_GROUP = "adapterhub"
PLUGINS_ENV = "ADAPTERHUB_PLUGINS"

#: the registries a plugin can add to: kind → (hook name, required base class or None)
KINDS: dict[str, tuple[str, type | None]] = {
    "method": ("adapterhub_register_methods", AdapterMethod),
    "quantizer": ("adapterhub_register_quantizers", Quantizer),
    "strategy": ("adapterhub_register_merge_strategies", MergeStrategy),
    "remote": ("adapterhub_register_remotes", None),
}


#: the error for a name no plugin registered, by kind
UNKNOWN: dict[str, type[UnknownPluginError]] = {
    "method": UnknownMethodError, "quantizer": UnknownQuantizerError,
    "strategy": UnknownStrategyError, "remote": UnknownRemoteError}


@dataclass
class PluginInfo:
    """One plugin: where it came from, what it registered, and what went wrong."""

    name: str
    module: str
    dist: str | None = None
    version: str | None = None
    errors: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "distribution": self.dist,
                "version": self.version, "ok": self.ok, "errors": self.errors,
                "registered": self.registered}


@dataclass(frozen=True)
class Registration:
    """Something a plugin registered: a method class, a quantizer class, ..."""

    kind: str
    name: str
    obj: Any
    plugin: str


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus adapterhub's registries of methods, quantizers, strategies, remotes."""

    def __init__(self) -> None:
        super().__init__("adapterhub")
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        #: each kind is collected on its first lookup only, so that looking up a remote (push,
        #: pull) does not import every method's kernels (and torch with them)
        self._registries: dict[str, dict[str, Registration]] = {}

    # -- loading ----------------------------------------------------------------------------

    def load_entry_points(self, only: list[str] | None = None) -> None:
        """Load every entry point of the ``adapterhub`` group (or just ``only``), each alone."""
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if only is not None and ep.name not in only:
                continue
            if ep.name in self.infos:
                continue
            # Distribution.name and .version each parse the METADATA file again; once will do
            meta = ep.dist.metadata if ep.dist else None
            dist = meta["Name"] if meta is not None else None
            version = meta["Version"] if meta is not None else None
            info = PluginInfo(ep.name, ep.value, dist, version)
            self.infos[ep.name] = info
            try:
                module = ep.load()
                self.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not break the others
                info.errors.append(f"failed to load: {type(exc).__name__}: {exc}")
                if os.environ.get("ADAPTERHUB_DEBUG"):
                    traceback.print_exc()

    def add_plugin(self, plugin: object, name: str, *, dist: str | None = None,
                   version: str | None = None) -> None:
        """Register a plugin object directly (tests, and code that embeds adapterhub)."""
        self.infos[name] = PluginInfo(name, getattr(plugin, "__name__", repr(plugin)), dist,
                                      version)
        self.register(plugin, name=name)
        self._registries = {}

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin added with :meth:`add_plugin` (tests) and forget what it
        registered."""
        self.unregister(name=name)
        self.infos.pop(name, None)
        self._registries = {}

    # -- registries -------------------------------------------------------------------------

    def _collect(self, kind: str) -> dict[str, Registration]:
        """Run every plugin's registration hook of one ``kind`` (once; then cached)."""
        if kind in self._registries:
            return self._registries[kind]
        hook_name, base = KINDS[kind]
        registry: dict[str, Registration] = {}
        for impl in getattr(self.hook, hook_name).get_hookimpls():  # first registration wins
            info = self.infos.setdefault(impl.plugin_name,
                                         PluginInfo(impl.plugin_name, repr(impl.plugin)))
            register = self._registrar(kind, base, registry, info)
            try:
                impl.function(*[{"register": register}[arg] for arg in impl.argnames])
            except Exception as exc:
                info.errors.append(f"{hook_name} failed: {type(exc).__name__}: {exc}")
                if os.environ.get("ADAPTERHUB_DEBUG"):
                    traceback.print_exc()
        self._registries[kind] = registry
        return registry

    @staticmethod
    def _registrar(kind: str, base: type | None, registry: dict[str, Registration],
                   info: PluginInfo) -> Callable[..., None]:
        def register(*args: Any) -> None:
            if kind == "remote":
                scheme, obj = args
                name = scheme
            else:
                (obj,) = args
                name = getattr(obj, "name", None)
                if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
                    raise RegistrationError(f"{info.name} registered {obj!r} as a {kind}, but "
                                            f"it is not a subclass of {base.__name__}")
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise RegistrationError(f"{info.name} registered a {kind} with invalid name "
                                        f"{name!r} (lowercase letters, digits, underscores)")
            if name in registry:
                raise RegistrationError(f"{info.name} registered {kind} {name!r}, already "
                                        f"registered by {registry[name].plugin}")
            registry[name] = Registration(kind, name, obj, info.name)
            info.registered.setdefault(kind, []).append(name)
        return register

    def registered(self, kind: str) -> dict[str, Registration]:
        """Everything of one kind (``method``, ``quantizer``, ``strategy``, ``remote``)."""
        return self._collect(kind)

    def lookup(self, kind: str, name: str) -> Any:
        """The registered object of ``kind`` called ``name``; an :class:`UnknownPluginError`
        naming the kind (:class:`UnknownMethodError`, :class:`UnknownQuantizerError`, ...)
        if none."""
        registry = self.registered(kind)
        if name not in registry:
            known = ", ".join(sorted(registry)) or "none"
            raise UNKNOWN.get(kind, UnknownPluginError)(f"unknown {kind} {name!r} (installed: "
                                                        f"{known})")
        return registry[name].obj

    def add_commands(self, cli: click.Group) -> None:
        """Let every plugin add its click commands; a failing plugin is recorded, not fatal."""
        for impl in self.hook.adapterhub_register_commands.get_hookimpls():
            try:
                impl.function(*[{"cli": cli}[arg] for arg in impl.argnames])
            except Exception as exc:
                self.infos.setdefault(impl.plugin_name,
                                      PluginInfo(impl.plugin_name, repr(impl.plugin))
                                      ).errors.append(f"adapterhub_register_commands failed: "
                                                      f"{type(exc).__name__}: {exc}")

    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin, after running all registrations (so errors and contents are known)."""
        for kind in KINDS:
            self._collect(kind)
        return sorted(self.infos.values(), key=lambda info: info.name)

    def failures(self) -> list[PluginLoadError]:
        """Every plugin problem, as errors naming the plugin and its distribution."""
        return [PluginLoadError(f"plugin {info.name!r}: {error}", plugin=info.name,
                                dist=info.dist)
                for info in self.plugin_infos() for error in info.errors]


def get_plugin_manager(*, load_entry_points: bool = True) -> PluginManager:
    """A fresh manager with the entry points loaded (honouring ``ADAPTERHUB_PLUGINS``)."""
    pm = PluginManager()
    if load_entry_points:
        only = os.environ.get(PLUGINS_ENV)
        pm.load_entry_points(None if only is None else
                             [n.strip() for n in only.split(",") if n.strip()])
    return pm


@functools.cache
def plugin_manager() -> PluginManager:
    """The process-wide manager (built on first use)."""
    return get_plugin_manager()


@functools.cache
def _method_instance(cls: type[AdapterMethod]) -> AdapterMethod:
    return cls()


def get_method(name: str) -> AdapterMethod:
    """The registered method called ``name``."""
    return _method_instance(plugin_manager().lookup("method", name))


def low_rank_method() -> AdapterMethod:
    """The installed method that stores any ΔW as low-rank factors (see
    :attr:`AdapterMethod.stores_low_rank`): what merges are stored as and what LoRA-only
    serving engines get. Among several, the first by name."""
    found = sorted(name for name, reg in plugin_manager().registered("method").items()
                   if reg.obj.__dict__.get("stores_low_rank"))
    if not found:
        raise UnknownMethodError("no installed method stores low-rank factors (LoRA does)",
                                 hint="Install or enable a LoRA method plugin")
    return get_method(found[0])


def get_quantizer(name: str | Quantizer) -> Quantizer:
    """The registered quantizer called ``name`` (a quantizer object is returned as it is)."""
    return name if isinstance(name, Quantizer) else plugin_manager().lookup("quantizer", name)()


def get_strategy(name: str) -> MergeStrategy:
    """The registered merge strategy called ``name``."""
    return plugin_manager().lookup("strategy", name)()
