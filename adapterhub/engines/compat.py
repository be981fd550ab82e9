"""Is an adapter compatible with a base checkpoint? Answered from safetensors headers only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapterhub.errors import IncompatibleBaseModelError
from adapterhub.io.checkpoint import Checkpoint
from registry_db.manifest import Manifest


@dataclass
class CompatReport:
    """Per-module findings: which base tensor each adapted module maps to, and what is wrong."""

    fingerprint_match: bool | None
    modules: dict[str, str] = field(default_factory=dict)  # module path → base tensor name
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "fingerprint_match": self.fingerprint_match,
                "modules": self.modules, "problems": self.problems}

    def raise_for_problems(self) -> None:
        if self.problems:
            more = f" ({len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            raise IncompatibleBaseModelError(f"adapter does not fit the base model: "
                                             f"{self.problems[0]}{more}")


def check_base(manifest: Manifest, checkpoint: Checkpoint) -> CompatReport:
    """Check every module the adapter adapts against the checkpoint's tensor headers.

    A quantized weight (a QLoRA base) is checked by the shape it stands for, and, for an
    adapter trained on a quantized base, by how it was quantized: an adapter that learned to
    correct one quantization does not fit weights stored with another.
    """
    expected = manifest.base_model.get("fingerprint")
    report = CompatReport(None if expected is None else expected == checkpoint.fingerprint)
    quantized = checkpoint.quantized
    for path, shape in sorted(manifest.base_model.get("modules", {}).items()):
        name = checkpoint.module_weight(path)
        if name is None:
            report.problems.append(f"the base has no weight for module {path!r}")
            continue
        report.modules[path] = name
        actual = list(checkpoint.shape(name))
        if actual != list(shape):
            report.problems.append(f"{name} has shape {actual}; the adapter expects "
                                   f"{list(shape)}")
        stored = quantized.get(name)
        if stored is not None and manifest.quantization is not None:
            from adapterhub.engines.quantization import quantization_label, same_quantization

            if not same_quantization(manifest.quantization, stored.quantization):
                report.problems.append(
                    f"{name} is stored as {quantization_label(stored.quantization)}; the "
                    f"adapter was trained on {quantization_label(manifest.quantization)}")
    return report
