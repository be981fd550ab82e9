"""An adapter version in memory and in the native on-disk format.

Native files: ``adapter.json`` (the canonical manifest, byte for byte, so its sha256 *is* the
version digest) and ``adapter.safetensors`` (the tensors, each checked against its digest on
load).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.errors import FormatError, IntegrityError
from adapterhub.io.safetensors import (RawTensor, dtype_name, load_tensors, save_tensors,
                                       tensor_digest, write_bytes_atomic, write_safetensors_stream)
from registry_db.digests import parse_json
from registry_db.manifest import Manifest, TensorEntry

if TYPE_CHECKING:
    import torch

    from adapterhub.contracts.config import MethodConfig
    from adapterhub.contracts.method import AdapterMethod

MANIFEST_FILE = "adapter.json"
TENSORS_FILE = "adapter.safetensors"


@dataclass(frozen=True)
class AdapterPackage:
    """A manifest plus its tensors: one adapter version.

    Build one with :meth:`build` (or :func:`adapterhub.extract` from a model), write it with
    :meth:`save`, read it with :meth:`load`.
    """

    manifest: Manifest
    tensors: dict[str, torch.Tensor]

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def build(cls, method: str | AdapterMethod, config: MethodConfig | dict[str, Any],
              tensors: dict[str, torch.Tensor], *, base_name: str | None = None,
              base_revision: str | None = None, base_fingerprint: str | None = None,
              quantization: dict[str, Any] | None = None, parents: tuple[str, ...] = (),
              recipe: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
              labels: dict[str, Any] | None = None) -> AdapterPackage:
        """Describe ``tensors`` with a manifest: digests, dtypes, shapes, adapted modules."""
        from adapterhub.contracts.plugins import get_method

        method_obj = get_method(method) if isinstance(method, str) else method
        config_obj = method_obj.make_config(config)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}
        modules = {path: list(method_obj.infer_base_shape(path, group, config_obj))
                   for path, group in sorted(method_obj.group_tensors(tensors).items())}
        manifest = Manifest(
            method={"name": method_obj.name, "version": method_obj.format_version,
                    "config": config_obj.to_dict()},
            base_model={"name": base_name, "revision": base_revision,
                        "fingerprint": base_fingerprint, "modules": modules},
            tensors={k: TensorEntry(tensor_digest(v), dtype_name(v.dtype), tuple(v.shape))
                     for k, v in tensors.items()},
            quantization=quantization, parents=tuple(parents), recipe=recipe,
            metrics=metrics or {}, labels=labels or {})
        return cls(manifest, tensors)

    @classmethod
    def from_blobs(cls, manifest: Manifest, blobs: Mapping[str, Any], *, raw: bool = False
                   ) -> AdapterPackage:
        """The package whose tensors are the raw ``blobs`` (digest → bytes) the manifest
        names. Tensors are views of the buffers, never allocated from a claimed shape: a blob
        must hold exactly the bytes its dtype and shape need (:class:`IntegrityError`
        otherwise), and tensors that name the same blob share one buffer rather than each
        getting a copy (treat package tensors as read-only). With ``raw`` the tensors are
        :class:`~adapterhub.io.safetensors.RawTensor` and torch is not imported: enough for
        writing files (``to_peft`` of methods that only rename tensors), not for math."""
        for name, entry in sorted(manifest.tensors.items()):
            size = len(blobs[entry.digest])
            if size != entry.nbytes:
                raise IntegrityError(f"tensor {name!r} is {entry.dtype} {list(entry.shape)} "
                                     f"({entry.nbytes} bytes) but its blob holds {size}")
        if raw:
            return cls(manifest, {name: RawTensor(entry.dtype, tuple(entry.shape),
                                                  blobs[entry.digest])
                                  for name, entry in manifest.tensors.items()})
        import torch

        from adapterhub.io.safetensors import torch_dtype

        tensors: dict[str, torch.Tensor] = {}
        buffers: dict[str, Any] = {}
        for name, entry in sorted(manifest.tensors.items()):
            data = blobs[entry.digest]
            if entry.digest not in buffers:  # writable buffers avoid a copy and a warning
                buffers[entry.digest] = data if isinstance(data, bytearray) else bytearray(data)
            buffer = buffers[entry.digest]
            dtype = torch_dtype(entry.dtype)
            tensors[name] = (torch.frombuffer(buffer, dtype=dtype).reshape(entry.shape)
                             if len(buffer) else torch.empty(entry.shape, dtype=dtype))
        return cls(manifest, tensors)

    def with_manifest(self, **changes: Any) -> AdapterPackage:
        """The same tensors under a manifest with some fields changed (labels, metrics, ...)."""
        return AdapterPackage(self.manifest.replace(**changes), self.tensors)

    # -- what it holds ----------------------------------------------------------------------

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def method(self) -> AdapterMethod:
        from adapterhub.contracts.plugins import get_method

        return get_method(self.manifest.method_name)

    @property
    def config(self) -> MethodConfig:
        return self.method.make_config(self.manifest.method["config"])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def verify(self) -> None:
        """Check that the tensors are exactly the ones the manifest names, byte for byte."""
        expected, present = set(self.manifest.tensors), set(self.tensors)
        if expected != present:
            missing, extra = sorted(expected - present), sorted(present - expected)
            raise IntegrityError(f"adapter tensors do not match its manifest (missing "
                                 f"{missing[:3]}, unexpected {extra[:3]})")
        for name, entry in self.manifest.tensors.items():
            tensor = self.tensors[name]
            if dtype_name(tensor.dtype) != entry.dtype or tuple(tensor.shape) != entry.shape:
                raise IntegrityError(f"tensor {name!r} is {dtype_name(tensor.dtype)} "
                                     f"{tuple(tensor.shape)}; the manifest says {entry.dtype} "
                                     f"{entry.shape}")
            if tensor_digest(tensor) != entry.digest:
                raise IntegrityError(f"tensor {name!r} does not match its digest {entry.digest}")

    # -- native files -----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``adapter.safetensors`` then ``adapter.json`` (each atomically) into a dir."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(self.tensors, directory / TENSORS_FILE,
                     metadata={"adapterhub_version": self.digest})
        write_bytes_atomic(directory / MANIFEST_FILE, self.manifest.canonical())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> AdapterPackage:
        """Read a native package directory and verify every tensor against the manifest."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        tensors_path = directory / TENSORS_FILE
        if not tensors_path.exists():
            raise FormatError(f"{directory} has {MANIFEST_FILE} but no {TENSORS_FILE}")
        package = cls(manifest, load_tensors(tensors_path))
        package.verify()
        return package


def write_native_files(manifest: Manifest,
                       read: Callable[[list[str]], Iterable[tuple[str, Any]]],
                       directory: str | os.PathLike[str]) -> Path:
    """Write the files :meth:`AdapterPackage.save` writes (the same manifest bytes, header
    and tensor data; the metadata's key order fixed), from blobs read
    one at a time (``read``: digests → ``(digest, bytes)``, each verified by the reader), so
    memory stays at one blob whatever the adapter's size. Needs no torch."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {n: (e.dtype, e.shape, e.digest) for n, e in manifest.tensors.items()}
    write_safetensors_stream(directory / TENSORS_FILE, tensors, read,
                             metadata={"adapterhub_version": manifest.digest})
    write_bytes_atomic(directory / MANIFEST_FILE, manifest.canonical())
    return directory


def is_native_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Parse ``adapter.json`` of a native package directory."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise FormatError(f"{directory} is not an adapter package (no {MANIFEST_FILE})",
                          hint="Point at a directory written by 'adapterhub' or 'save()', or "
                               "import a PEFT adapter with 'adapterhub import'")
    data = parse_json(path.read_bytes(), what=str(path))
    try:
        return Manifest.from_dict(data)
    except FormatError as exc:
        raise type(exc)(f"{path}: {exc.message}") from None
