"""What changed between two adapter versions: settings, and each tensor's change as a norm."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from registry_db import Manifest, TensorEntry


def _settings(manifest: Manifest) -> dict[str, Any]:
    base = {k: v for k, v in manifest.base_model.items() if k != "modules"}
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", {"method": manifest.method, "quantization": manifest.quantization,
              "base_model": base, "recipe": manifest.recipe, "metrics": manifest.metrics,
              "labels": manifest.labels, "parents": list(manifest.parents)})
    return flat


def diff_manifests(a: Manifest, b: Manifest,
                   load: Callable[[TensorEntry], torch.Tensor]) -> dict[str, Any]:
    """Settings that differ (``{key: [a, b]}``, dotted keys; absent is ``null``) and, per tensor,
    ``‖b − a‖`` (Frobenius, fp32) with ``‖a‖`` and the relative change. Tensors with equal
    digests are not loaded."""
    sa, sb = _settings(a), _settings(b)
    settings = {key: [sa.get(key), sb.get(key)] for key in sorted(set(sa) | set(sb))
                if sa.get(key) != sb.get(key)}
    tensors = []
    for name in sorted(set(a.tensors) | set(b.tensors)):
        ea, eb = a.tensors.get(name), b.tensors.get(name)
        row: dict[str, Any] = {"name": name}
        if ea is None or eb is None:
            row["status"] = "added" if ea is None else "removed"
        elif ea.digest == eb.digest:
            row.update(status="same", change_norm=0.0)
        elif ea.shape != eb.shape:
            row.update(status="reshaped", shape=[list(ea.shape), list(eb.shape)])
        else:
            ta, tb = load(ea).float(), load(eb).float()
            norm_a = float(ta.norm())
            change = float((tb - ta).norm())
            row.update(status="changed", norm_a=norm_a, norm_b=float(tb.norm()),
                       change_norm=change, relative=change / norm_a if norm_a else None)
        tensors.append(row)
    return {"settings": settings, "tensors": tensors,
            "changed_tensors": sum(1 for t in tensors if t["status"] != "same")}
