"""``adapterhub train``: train an adapter (or build a composite one) and keep it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.api.sources import RegistryArg, opened, registry_arg
from adapterhub.contracts.plugins import get_method
from adapterhub.errors import ConfigError
from adapterhub.io.outdir import output_dir, refuse_non_empty
from adapterhub.registry.sources import resolve_source

if TYPE_CHECKING:
    from adapterhub.contracts.config import MethodConfig
    from adapterhub.io.package import AdapterPackage
    from registry_db import VersionInfo


@dataclass(frozen=True)
class TrainResult:
    package: AdapterPackage
    version: VersionInfo | None  # with ``push``: the stored version


def train(method: str, base: str | os.PathLike[str], data: str | os.PathLike[str], *,
          task: str, config: MethodConfig | dict[str, Any] | None = None,
          experts: Sequence[str | os.PathLike[str] | AdapterPackage] = (), epochs: int = 1,
          lr: float = 2e-4, batch_size: int = 8, max_length: int = 128,
          eval_fraction: float = 0.1, seed: int = 0, labels: dict[str, Any] | None = None,
          out: str | os.PathLike[str] | None = None, push: str | None = None,
          message: str | None = None, force: bool = False, registry: RegistryArg = None,
          on_log: Callable[[dict[str, Any]], None] | None = None,
          show_progress: bool = True) -> TrainResult:
    """Train a ``method`` adapter on the model in ``base`` from ``data`` (see
    :func:`adapterhub.engines.training.train`), or, with ``experts`` (refs, directories or
    packages), build a version of a composite method over them
    (:func:`~adapterhub.engines.training.train_composite`); then save it to ``out`` and/or
    push it as ``push`` into ``registry``."""
    from adapterhub.engines.training import train as run
    from adapterhub.engines.training import train_composite

    if out is None and push is None:
        raise ConfigError("say where the trained adapter goes: out=DIR, push=NS/NAME, or both")
    if out is not None and not force:
        refuse_non_empty(Path(out))
    method_obj = get_method(method)
    if experts:
        if config:
            raise ConfigError("a config does not apply with experts (the experts fix the "
                              "adapted layers)")
        reg, db = registry_arg(registry)
        components = [resolve_source(e, registry=reg, db=db).package() for e in experts]
        package = train_composite(base, data, task=task, method=method_obj,
                                  experts=components, epochs=epochs, lr=lr,
                                  batch_size=batch_size, max_length=max_length, seed=seed,
                                  show_progress=show_progress, labels=labels)
    else:
        package = run(base, data, task=task, method=method_obj, config=config, epochs=epochs,
                      lr=lr, batch_size=batch_size, max_length=max_length,
                      eval_fraction=eval_fraction, seed=seed, on_log=on_log,
                      show_progress=show_progress, labels=labels)
    if out is not None:
        with output_dir(out, force=force) as staging:
            package.save(staging)
    version = None
    if push is not None:
        with opened(registry) as reg:
            version = reg.push(package, push, message=message or
                               f"adapterhub train --method {method_obj.name}",
                               progress=False).version
    return TrainResult(package, version)
