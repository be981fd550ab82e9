"""Finding a MoE version's experts and checking that they fit together.

:func:`load_experts` is the one place that turns expert *sources* into packages: today an
:class:`~adapterhub.AdapterPackage` or a native package directory; registry references plug in
here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, Union

from adapterhub import (AdapterNotFoundError, AdapterPackage, ConfigError,
                        IncompatibleBaseModelError, MergeError)

if TYPE_CHECKING:
    import torch

    from adapterhub_ttlora_moe.config import TTLoraMoeConfig

ExpertSource = Union[AdapterPackage, str, "os.PathLike[str]"]


def load_experts(sources: Iterable[ExpertSource]) -> list[AdapterPackage]:
    """The ``ttlora`` packages behind ``sources`` (packages or native package directories)."""
    from adapterhub.plugin_api import read_adapter

    packages = []
    for source in sources:
        package = source if isinstance(source, AdapterPackage) else read_adapter(source)
        if package.manifest.method_name != "ttlora":
            raise ConfigError(f"expert {_describe(source)} is a {package.manifest.method_name!r} "
                              f"adapter; ttlora_moe experts must be 'ttlora' versions")
        packages.append(package)
    return packages


def resolve_experts(config: TTLoraMoeConfig, sources: Iterable[ExpertSource] | None
                    ) -> list[AdapterPackage]:
    """The experts ``config`` lists, in router order, found among ``sources`` by digest."""
    supplied = {package.digest: package for package in load_experts(sources or ())}
    for digest, name in zip(config.experts, config.expert_names):
        if digest not in supplied:
            raise _missing(name, digest)
    return [supplied[digest] for digest in config.experts]


def expert_name(package: AdapterPackage, index: int) -> str:
    """An expert's default name: its ``name`` or ``task`` label, else ``expert<index>``."""
    labels = package.manifest.labels
    return str(labels.get("name") or labels.get("task") or f"expert{index}")


def stack_experts(packages: list[AdapterPackage]
                  ) -> tuple[dict[str, list[list[torch.Tensor]]], dict[str, int], list[float]]:
    """Per module, each expert's cores in train order; the input-core count; each α.

    Refuses experts that adapt different modules, have different core shapes, or were trained
    on different base models.
    """
    from adapterhub_ttlora_moe.method import split_cores

    if not packages:
        raise ConfigError("a ttlora_moe needs at least one expert")
    first = packages[0]
    fingerprint = first.manifest.base_model.get("fingerprint")
    stacks: dict[str, list[list[torch.Tensor]]] = {}
    n_in: dict[str, int] = {}
    for index, package in enumerate(packages):
        other = package.manifest.base_model.get("fingerprint")
        if fingerprint and other and other != fingerprint:
            raise IncompatibleBaseModelError(
                f"expert {index} ({package.digest}) was trained on another base model than "
                f"expert 0 (fingerprint {other} vs {fingerprint})")
        groups = package.method.group_tensors(package.tensors)
        if index and set(groups) != set(stacks):
            raise ConfigError(f"expert {index} ({package.digest}) adapts other modules than "
                              f"expert 0; all experts must adapt the same modules")
        for path, tensors in groups.items():
            in_cores, out_cores = split_cores(path, tensors)
            cores = in_cores + out_cores
            if index:
                want = [tuple(c.shape) for c in stacks[path][0]]
                got = [tuple(c.shape) for c in cores]
                if got != want or len(in_cores) != n_in[path]:
                    raise ConfigError(f"expert {index} ({package.digest}) has cores {got} on "
                                      f"{path}; expert 0 has {want}. All experts need the same "
                                      f"rank and factorisation")
            stacks.setdefault(path, []).append(cores)
            n_in[path] = len(in_cores)
    return stacks, n_in, [float(p.config.alpha) for p in packages]


def select_expert(package: AdapterPackage, experts: Iterable[ExpertSource],
                  expert: str | int) -> AdapterPackage:
    """The ``ttlora`` version of one expert of a MoE version, by name, index or digest.

    This is how a MoE is merged: pick one expert and merge that (``apply --expert NAME``).
    """
    if package.manifest.method_name != "ttlora_moe":
        raise MergeError(f"select_expert needs a ttlora_moe version; this one is "
                         f"{package.manifest.method_name!r}")
    config = package.config
    index = config.expert_index(expert)
    digest, name = config.experts[index], config.expert_names[index]
    for candidate in load_experts(experts):
        if candidate.digest == digest:
            return candidate
    raise _missing(name, digest)


def _missing(name: str, digest: str) -> AdapterNotFoundError:
    return AdapterNotFoundError(f"ttlora_moe expert {name!r} ({digest}) was not supplied",
                                hint="Pass the expert versions the MoE lists (experts=[...] in "
                                     "Python, --experts on the command line)")


def _describe(source: ExpertSource) -> str:
    if isinstance(source, AdapterPackage):
        return source.digest
    return os.fspath(source)
