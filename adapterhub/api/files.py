"""Adapters as files: ``show``, ``import``, ``export`` and ``check``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.api.sources import RegistryArg, registry_arg
from adapterhub.errors import ExportError
from adapterhub.io.outdir import output_dir, refuse_non_empty
from adapterhub.registry.sources import resolve_source

if TYPE_CHECKING:
    from adapterhub.engines.compat import CompatReport
    from adapterhub.io.formats.lint import TargetReport
    from adapterhub.io.package import AdapterPackage
    from registry_db import Manifest, VersionInfo

EXPORT_FORMATS = ("peft", "vllm", "trtllm")
EXPORT_LAYOUTS = ("dir", "hf-cache")


def summary(manifest: Manifest) -> dict[str, Any]:
    """An adapter described from its manifest: method, base, tensors, lineage, metrics."""
    return {
        "digest": manifest.digest,
        "method": manifest.method,
        "quantization": manifest.quantization,
        "base_model": {k: v for k, v in manifest.base_model.items() if k != "modules"},
        "modules": len(manifest.base_model.get("modules", {})),
        "tensors": {name: {"dtype": e.dtype, "shape": list(e.shape), "digest": e.digest}
                    for name, e in sorted(manifest.tensors.items())},
        "parameters": sum(e.numel for e in manifest.tensors.values()),
        "bytes": manifest.nbytes,
        "parents": list(manifest.parents),
        "recipe": manifest.recipe,
        "metrics": manifest.metrics,
        "labels": manifest.labels,
    }


def version_fields(version: VersionInfo) -> dict[str, Any]:
    """What describing a version in a registry adds to :func:`summary`."""
    return {"ref": version.ref, "name": version.name, "number": version.number,
            "tags": list(version.tags), "author": version.author, "message": version.message,
            "created_at": version.created_at.isoformat()}


def describe(source: str | os.PathLike[str], *, registry: RegistryArg = None
             ) -> dict[str, Any]:
    """``adapterhub show``: an adapter (a directory, read and verified, or a ref)."""
    reg, db = registry_arg(registry)
    resolved = resolve_source(source, registry=reg, db=db)
    if resolved.version is None:
        resolved.package()  # a directory: read and verify every tensor
    info = summary(resolved.manifest)
    if resolved.version is not None:
        info.update(version_fields(resolved.version))
    return info


def import_adapter(path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   base: str | os.PathLike[str] | None = None, force: bool = False
                   ) -> AdapterPackage:
    """``adapterhub import``: a PEFT adapter directory as a native package in ``out``
    (new or empty unless ``force``); ``base`` records the base checkpoint's fingerprint."""
    from adapterhub.io.formats.peft import read_peft

    package = read_peft(path, base=base)
    with output_dir(out, force=force) as staging:
        package.save(staging)
    return package


def export(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
           format: str = "peft", layout: str = "dir", repo_id: str | None = None,
           revision: str | None = None, dtype: str | None = None,
           base: str | os.PathLike[str] | None = None, force: bool = False,
           registry: RegistryArg = None) -> Path:
    """``adapterhub export``: write an adapter (a directory or a ref) in a serving layout.

    ``format``: ``peft``, ``vllm`` (PEFT's layout, each module's scaling folded in) or
    ``trtllm`` (TensorRT-LLM's arrays; ``dtype`` and, for DoRA, ``base``). ``layout``:
    ``dir`` (the files in ``out``, new or empty unless ``force``) or ``hf-cache`` (a Hugging
    Face cache tree under ``out``, loadable offline as ``repo_id`` at ``revision``; both
    default to the ref's repository and ``v<N>``). Returns the directory written.
    """
    if format not in EXPORT_FORMATS or layout not in EXPORT_LAYOUTS:
        raise ExportError(f"unknown format {format!r} or layout {layout!r}; formats: "
                          f"{', '.join(EXPORT_FORMATS)}; layouts: {', '.join(EXPORT_LAYOUTS)}")
    if format != "trtllm" and (dtype or base):
        raise ExportError("dtype and base go with the trtllm format")
    if format == "trtllm" and layout == "hf-cache":
        raise ExportError("an hf-cache layout holds PEFT files; use the peft or vllm format")
    reg, db = registry_arg(registry)
    resolved = resolve_source(source, registry=reg, db=db)
    if resolved.version is not None:
        repo_id = repo_id or resolved.version.name
        revision = revision or f"v{resolved.version.number}"
    if layout == "hf-cache" and not repo_id:
        raise ExportError("an hf-cache export needs a repository id (namespace/name)")
    if layout == "dir" and not force:
        refuse_non_empty(Path(out))  # before any work
    package = resolved.package()
    if format == "trtllm":
        from adapterhub.io.formats.trtllm import trtllm_files

        files = trtllm_files(package, dtype=dtype or "float16", base=base)
    else:
        from adapterhub.io.formats.peft import layout_files, peft_layout
        from adapterhub.io.formats.vllm import vllm_layout

        files = layout_files(*(vllm_layout if format == "vllm" else peft_layout)(package))
    if layout == "hf-cache":
        from adapterhub.io.formats.hf_cache import write_hf_cache

        return write_hf_cache(files, out, repo_id, revision=revision or "main")
    from adapterhub.io.formats.peft import write_files

    with output_dir(out, force=force) as staging:
        write_files(files, staging)
    return Path(out)


@dataclass(frozen=True)
class CheckResult:
    """``adapterhub check``: the fit to a base checkpoint and to serving targets."""

    base: CompatReport | None
    targets: list[TargetReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.base is None or self.base.ok) and all(t.ok for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        if not self.targets:
            return self.base.to_dict()
        return {"base": self.base.to_dict() if self.base else None,
                "targets": [t.to_dict() for t in self.targets]}


def check(source: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None,
          targets: list[str] | tuple[str, ...] = (), registry: RegistryArg = None
          ) -> CheckResult:
    """Whether an adapter (a directory or a ref) fits the checkpoint ``base`` (from headers
    only) and what each serving target (``vllm[:max_rank=N]``, ``trtllm[:max_rank=N]``,
    ``peft``) would refuse."""
    from adapterhub.engines.compat import check_base
    from adapterhub.io.checkpoint import Checkpoint
    from adapterhub.io.formats.lint import check_target

    if base is None and not targets:
        raise ExportError("check needs a base checkpoint, a serving target, or both")
    on_disk = Path(source).exists()
    reg, db = registry_arg(registry)
    resolved = resolve_source(source, registry=reg, db=db) if base or not on_disk else None
    report = check_base(resolved.manifest, Checkpoint(base)) if base else None
    # a directory is linted as it is on disk (a PEFT directory's own files); a ref as a package
    subject = source if on_disk else resolved.package()
    return CheckResult(report, [check_target(subject, spec) for spec in targets])
