"""Configs of methods and quantizers: validated, JSON-able dataclasses."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterable
from typing import Any, Self, Union, get_args, get_origin

from adapterhub.errors import ConfigError

#: what a method, quantizer, strategy or remote may be called
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclasses.dataclass
class ConfigBase:
    """A validated, JSON-able dataclass: the base of method and quantizer configs.

    Subclasses are ``@dataclasses.dataclass`` classes whose fields all have defaults and carry
    ``metadata={"help": "..."}``. ``validate`` raises :class:`ConfigError` quoting the bad value.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check field values; raise :class:`ConfigError` naming the field and the value."""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types (what manifests store)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build a config from a dict, refusing unknown fields."""
        if not isinstance(data, dict):
            raise ConfigError(f"a method config must be a JSON object; got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)} for "
                              f"{cls.__name__}; known fields: {', '.join(sorted(names))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid config for {cls.__name__}: {exc}") from None

    @classmethod
    def from_strings(cls, pairs: Iterable[str]) -> Self:
        """Build a config from ``KEY=VALUE`` strings (the CLI's ``--config``).

        A value is read as JSON when it parses (``16``, ``true``, ``["q","v"]``), a list field
        also takes ``a,b,c``, and anything else is a string.
        """
        data: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ConfigError(f"config entries are KEY=VALUE; got {pair!r}")
            try:
                value: Any = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if isinstance(value, str) and "," in value and _accepts_list(hints.get(key)):
                value = [part.strip() for part in value.split(",") if part.strip()]
            data[key] = value
        return cls.from_dict(data)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Each field's name, type, default and help text (for ``adapterhub methods``)."""
        out = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            out.append({"name": f.name, "type": _type_name(hints.get(f.name, f.type)),
                        "default": default, "help": f.metadata.get("help", "")})
        return out


@dataclasses.dataclass
class MethodConfig(ConfigBase):
    """Base class of every method's config (see :class:`ConfigBase`)."""

    target_modules: list[str] | str | None = dataclasses.field(
        default=None,
        metadata={"help": "module names (matched on the last path parts), a regex matched on the "
                          "whole path, or 'all-linear'; None uses the architecture's default"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (tuple, set)):
            self.target_modules = sorted(self.target_modules)
        if self.target_modules is not None and not isinstance(self.target_modules, (str, list)):
            raise ConfigError(f"target_modules must be a list of names or a regex string; "
                              f"got {self.target_modules!r}")
        super().__post_init__()


@dataclasses.dataclass
class QuantizerConfig(ConfigBase):
    """Base class of every quantizer's config (see :class:`ConfigBase`)."""


def _accepts_list(hint: Any) -> bool:
    if hint is None:
        return False
    if get_origin(hint) is list or hint is list:
        return True
    if get_origin(hint) in (Union, types.UnionType):
        return any(_accepts_list(arg) for arg in get_args(hint))
    return False


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")
