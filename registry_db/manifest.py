"""The adapter manifest: what an adapter version *is*, independent of any tensor library.

A version is a manifest plus content-addressed tensors. The manifest is stored and hashed as
canonical JSON and holds no timestamps, so the same content always has the same digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from registry_db.digests import canonical_json, check_json_depth, is_digest, sha256_digest
from registry_db.errors import LimitExceededError, ManifestError

FORMAT = "adapterhub/1"
#: bytes per element of each safetensors dtype name
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_FIELDS = {"format", "method", "quantization", "base_model", "tensors", "parents", "recipe",
           "metrics", "labels"}

#: what one manifest may hold: a registry refuses more before it stores anything
MAX_TENSORS = 100_000
MAX_NDIM = 8
MAX_TENSOR_BYTES = 64 << 30  # also the largest blob
MAX_PARENTS = 256
MAX_MANIFEST_BYTES = 16 << 20
MAX_TENSOR_NAME = 1024
MAX_METHOD_NAME = 64
MAX_BASE_NAME = 256


@dataclass(frozen=True)
class TensorEntry:
    """One named tensor: its content digest, safetensors dtype name and shape."""

    digest: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES.get(self.dtype, 1)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Manifest:
    """The canonical description of one adapter version (see docs/formats.md).

    ``method`` is ``{name, version, config}``; ``base_model`` is ``{name, revision,
    fingerprint, modules}`` where ``modules`` maps each adapted module path to the shape of
    its base weight; ``parents`` are version digests (merge inputs, experts, fine-tuned-from).
    Treat one as read-only (build another with :meth:`replace`): its canonical bytes are
    encoded once, and registries share parsed manifests by digest.
    """

    method: dict[str, Any]
    base_model: dict[str, Any]
    tensors: dict[str, TensorEntry]
    quantization: dict[str, Any] | None = None
    parents: tuple[str, ...] = ()
    recipe: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "method": self.method,
            "quantization": self.quantization,
            "base_model": self.base_model,
            "tensors": {name: entry.to_dict() for name, entry in sorted(self.tensors.items())},
            "parents": list(self.parents),
            "recipe": self.recipe,
            "metrics": self.metrics,
            "labels": self.labels,
        }

    def canonical(self) -> bytes:
        """The bytes that are stored, hashed and compared (computed once: a manifest is
        immutable)."""
        return self._canonical

    @cached_property
    def _canonical(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        """The version digest: ``sha256:`` of the canonical manifest bytes."""
        return sha256_digest(self.canonical())

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors (what a download of this version moves)."""
        return sum(entry.nbytes for entry in self.tensors.values())

    @property
    def method_name(self) -> str:
        return self.method["name"]

    def replace(self, **changes: Any) -> Manifest:
        """A copy with some fields changed (manifests are immutable)."""
        return replace(self, **changes)

    def validate(self) -> None:
        """Check what a registry requires before storing a version, whoever built the
        manifest: known dtypes, bounded shapes and counts, finite metrics (the size of the
        canonical bytes, :data:`MAX_MANIFEST_BYTES`, is checked where they are made).
        Raises :class:`ManifestError` or :class:`LimitExceededError` naming the field."""
        if not isinstance(self.method.get("name"), str) or not \
                0 < len(self.method["name"]) <= MAX_METHOD_NAME:
            raise ManifestError(f"manifest method.name must be 1-{MAX_METHOD_NAME} characters")
        name = self.base_model.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_BASE_NAME):
            raise ManifestError(f"manifest base_model.name must be a string of at most "
                                f"{MAX_BASE_NAME} characters")
        fingerprint = self.base_model.get("fingerprint")
        if fingerprint is not None and not is_digest(fingerprint):
            raise ManifestError("manifest base_model.fingerprint must be a sha256 digest")
        if len(self.tensors) > MAX_TENSORS:
            raise LimitExceededError(f"the manifest names {len(self.tensors)} tensors; the "
                                     f"limit is {MAX_TENSORS}")
        if len(self.parents) > MAX_PARENTS:
            raise LimitExceededError(f"the manifest names {len(self.parents)} parents; the "
                                     f"limit is {MAX_PARENTS}")
        for tensor, entry in self.tensors.items():
            if not isinstance(tensor, str) or not 0 < len(tensor) <= MAX_TENSOR_NAME \
                    or not tensor.isprintable():
                raise ManifestError(f"tensor name {str(tensor)[:80]!r} must be 1-"
                                    f"{MAX_TENSOR_NAME} printable characters")
            if entry.dtype not in DTYPE_SIZES:
                raise ManifestError(f"tensor {tensor!r} has unknown dtype {entry.dtype[:20]!r}; "
                                    f"known: {', '.join(DTYPE_SIZES)}")
            if len(entry.shape) > MAX_NDIM or entry.nbytes > MAX_TENSOR_BYTES:
                raise LimitExceededError(f"tensor {tensor!r} has shape {list(entry.shape)[:9]}"
                                         f"; a tensor has at most {MAX_NDIM} dimensions and "
                                         f"{MAX_TENSOR_BYTES} bytes")
        for key in ("method", "base_model", "quantization", "recipe", "metrics", "labels"):
            check_json_depth(getattr(self, key), f"manifest {key}")

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and validate a manifest; raises :class:`ManifestError` (or
        :class:`LimitExceededError`) naming the bad field."""
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        unknown = set(data) - _FIELDS
        if unknown:
            raise ManifestError(f"manifest has unknown field(s): "
                                f"{', '.join(sorted(map(str, unknown))[:5])[:200]}")
        if data.get("format") != FORMAT:
            raise ManifestError(f"manifest format is {str(data.get('format'))[:40]!r}; this "
                                f"version of adapterhub reads {FORMAT!r}")
        method = _object(data, "method")
        if not isinstance(method.get("name"), str) or not isinstance(method.get("config"), dict):
            raise ManifestError("manifest method needs a name and a config object")
        if not isinstance(method.get("version"), int) or isinstance(method["version"], bool):
            raise ManifestError("manifest method.version must be an integer")
        base = _object(data, "base_model")
        modules = base.get("modules", {})
        if not isinstance(modules, dict) or not all(
                _is_shape(s) for s in modules.values()):
            raise ManifestError("manifest base_model.modules must map module paths to shapes")
        raw_tensors = _object(data, "tensors")
        if len(raw_tensors) > MAX_TENSORS:
            raise LimitExceededError(f"the manifest names {len(raw_tensors)} tensors; the "
                                     f"limit is {MAX_TENSORS}")
        tensors = {}
        for name, entry in raw_tensors.items():
            if not isinstance(entry, dict) or not is_digest(entry.get("digest")) \
                    or not isinstance(entry.get("dtype"), str) or not _is_shape(entry.get("shape")):
                raise ManifestError(f"manifest entry for tensor {name[:80]!r} needs a sha256 "
                                    f"digest, a dtype and a shape of at most {MAX_NDIM} sizes")
            tensors[name] = TensorEntry(entry["digest"], entry["dtype"], tuple(entry["shape"]))
        parents = data.get("parents", [])
        if not isinstance(parents, list) or not all(is_digest(p) for p in parents):
            raise ManifestError("manifest parents must be a list of sha256 version digests")
        for key in ("quantization", "recipe"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise ManifestError(f"manifest {key} must be an object or null")
        for key in ("metrics", "labels"):
            if not isinstance(data.get(key, {}), dict):
                raise ManifestError(f"manifest {key} must be an object")
        manifest = cls(method=method, base_model=base, tensors=tensors,
                       quantization=data.get("quantization"), parents=tuple(parents),
                       recipe=data.get("recipe"), metrics=data.get("metrics", {}),
                       labels=data.get("labels", {}))
        manifest.validate()
        return manifest


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ManifestError(f"manifest field {key!r} must be an object")
    return value


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) <= MAX_NDIM and all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in value)
