"""``adapterhub merge`` and ``adapterhub rebuild``: merges as new versions, and their check."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.api.sources import RegistryArg, opened, packages_to_fold
from adapterhub.engines.merging import merge_adapters, replay
from adapterhub.errors import IntegrityError, MergeError, NoRecipeError
from adapterhub.io.outdir import output_dir, refuse_non_empty
from adapterhub.registry.sources import fetch_version

if TYPE_CHECKING:
    from adapterhub.io.package import AdapterPackage
    from registry_db import VersionInfo


@dataclass(frozen=True)
class MergeResult:
    package: AdapterPackage
    version: VersionInfo | None  # with ``to``: the stored version


def merge(adapters: Sequence[str | os.PathLike[str] | AdapterPackage], strategy: str, *,
          weights: Sequence[float] | None = None, density: float | None = None,
          rank: int | None = None, seed: int | None = None,
          params: dict[str, Any] | None = None, to: str | None = None,
          out: str | os.PathLike[str] | None = None, message: str | None = None,
          expert: str | None = None, force: bool = False, registry: RegistryArg = None,
          progress: bool = True) -> MergeResult:
    """Merge ``adapters`` (refs, directories or packages) with ``strategy`` into a new version
    that records its parents and recipe; store it as ``to`` in ``registry`` and/or write it to
    ``out`` (new or empty unless ``force``)."""
    if to is None and out is None:
        raise MergeError("say where the merge goes: to a repository (to=NS/NAME), a directory "
                         "(out=DIR), or both")
    if out is not None and not force:
        refuse_non_empty(Path(out))  # before the work
    packages = packages_to_fold(adapters, registry, expert=expert)
    merged = merge_adapters(packages, strategy, weights=weights, density=density, rank=rank,
                            seed=seed, **(params or {}))
    if out is not None:
        with output_dir(out, force=force) as staging:
            merged.save(staging)
    version = None
    if to is not None:
        with opened(registry) as reg:
            version = reg.push(merged, to, message=message or f"{strategy} merge of "
                               f"{len(packages)} adapters", progress=progress).version
    return MergeResult(merged, version)


@dataclass(frozen=True)
class RebuildResult:
    ref: str
    digest: str  # stored
    rebuilt: str
    parents: int
    strategy: str

    @property
    def ok(self) -> bool:
        return self.rebuilt == self.digest

    def raise_for_mismatch(self) -> None:
        if not self.ok:
            raise IntegrityError(f"rebuilding {self.ref} gave {self.rebuilt}, not its stored "
                                 f"{self.digest}",
                                 hint="The parents, the strategy plugin or the numeric "
                                      "libraries differ from those that built it; compare "
                                      "'adapterhub diff'")


def rebuild(ref: str, *, registry: RegistryArg = None) -> RebuildResult:
    """Recompute a merged version from its recipe and parents (which ``registry`` must hold)
    and compare digests."""
    with opened(registry) as reg:
        version = reg.resolve(ref)
        manifest = version.manifest
        if manifest.recipe is None:
            raise NoRecipeError(f"{version.ref} has no merge recipe: it was not made by "
                                f"'adapterhub merge'")
        parents = [fetch_version(digest, reg, what=f"parent {index + 1}")
                   for index, digest in enumerate(manifest.parents)]
        rebuilt = replay(parents, manifest.recipe)
    return RebuildResult(version.ref, manifest.digest, rebuilt.digest, len(parents),
                         manifest.recipe["strategy"])
