"""Will a serving engine load this adapter? ``check --target vllm|trtllm[:max_rank=N]|peft``.

A PEFT directory is linted as it is, from ``adapter_config.json`` and the safetensors header
(what the engine itself would read). A native package is linted as what ``export --format
<target>`` would write for it, so the answer is about the files you would ship.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.errors import AdapterHubError, ConfigError
from adapterhub.io.formats.vllm import EMBEDDING_MODULES, VLLM_RANKS
from registry_db.digests import parse_json

if TYPE_CHECKING:
    from adapterhub.io.package import AdapterPackage

TARGETS = ("peft", "vllm", "trtllm")
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass
class TargetReport:
    """What stands between an adapter and a serving target."""

    target: str
    options: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "options": self.options, "ok": self.ok,
                "problems": self.problems, "notes": self.notes}


def parse_target(spec: str) -> tuple[str, dict[str, Any]]:
    """``"vllm:max_rank=16"`` → ``("vllm", {"max_rank": 16})``."""
    name, _, rest = spec.partition(":")
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}",
                          hint="Example: --target vllm:max_rank=16")
    options: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if name == "peft" or key != "max_rank" or not sep:
            raise ConfigError(f"unknown option {pair!r} for target {name!r}",
                              hint="vllm and trtllm take max_rank=N; peft takes no options")
        if name == "trtllm":
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"max_rank must be a positive integer; got {value!r}")
        elif not value.isdigit() or int(value) not in VLLM_RANKS:
            raise ConfigError(f"max_rank must be one of vLLM's ranks "
                              f"{', '.join(map(str, VLLM_RANKS))}; got {value!r}")
        options["max_rank"] = int(value)
    return name, options


def check_target(adapter: str | os.PathLike[str] | AdapterPackage, spec: str) -> TargetReport:
    """Lint an adapter (a package, or a native or PEFT directory) for the target ``spec``."""
    from adapterhub.io.formats import peft, read_adapter

    name, options = parse_target(spec)
    report = TargetReport(name, options)
    if hasattr(adapter, "manifest"):
        package = adapter
    else:
        path = Path(adapter)
        if peft.is_peft_dir(path) and not (path / "adapter.json").exists():
            if name == "peft":
                _check_peft_dir(path, report)
            elif name == "trtllm":
                from adapterhub.io.formats.trtllm import lint_peft_files

                lint_peft_files(*_read_peft_files(path), report.problems, report.notes,
                                options.get("max_rank"))
            else:
                _check_vllm(*_read_peft_files(path), report)
            return report
        package = read_adapter(path)
    if name == "trtllm":
        from adapterhub.io.formats.trtllm import lint_package

        lint_package(package, report.problems, report.notes, options.get("max_rank"))
        return report
    try:
        layout = _export_layout(package, name)
    except AdapterHubError as exc:
        report.problems.append(exc.message)
        if exc.hint:
            report.notes.append(exc.hint)
        return report
    if name == "vllm":
        _check_vllm(layout[0], {k: tuple(v.shape) for k, v in layout[1].items()}, report)
    return report


def _export_layout(package: AdapterPackage, target: str):
    from adapterhub.io.formats.peft import peft_layout
    from adapterhub.io.formats.vllm import vllm_layout

    return vllm_layout(package) if target == "vllm" else peft_layout(package)


def _read_peft_files(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    from adapterhub.errors import FormatError
    from adapterhub.io.formats.peft import CONFIG_FILE, WEIGHTS_FILE
    from adapterhub.io.safetensors import read_header

    config = parse_json((path / CONFIG_FILE).read_bytes(), what=str(path / CONFIG_FILE))
    if not isinstance(config, dict):
        raise FormatError(f"{path / CONFIG_FILE} is not a JSON object")
    header = read_header(path / WEIGHTS_FILE)
    return config, {name: info.shape for name, info in header.tensors.items()}


def _check_peft_dir(path: Path, report: TargetReport) -> None:
    """PEFT itself reads any PEFT directory; what matters is that adapterhub can convert it."""
    from adapterhub.io.formats.peft import read_peft

    try:
        read_peft(path)
    except AdapterHubError as exc:
        report.problems.append(exc.message)


def _check_vllm(config: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                report: TargetReport) -> None:
    problems, notes = report.problems, report.notes
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; vLLM loads LORA adapters "
                        f"only")
    for key in ("r", "lora_alpha", "target_modules"):
        if config.get(key) in (None, [], ""):
            problems.append(f"adapter_config.json has no {key}")
    if config.get("use_dora"):
        problems.append("use_dora is set; vLLM does not support DoRA (merge it into the base "
                        "with 'adapterhub apply' and serve the merged model)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save is {config['modules_to_save']!r}; vLLM only "
                        f"supports modules_to_save being None")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r}; vLLM loads bias='none' adapters only")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            problems.append(f"{key} is set; vLLM applies one scaling (lora_alpha / r) to every "
                            f"module, so these modules would be scaled wrongly "
                            f"(export with --format vllm to fold them)")
    ranks = []
    for name, shape in sorted(shapes.items()):
        module = name.removeprefix("base_model.model.")
        if ".lora_embedding_" in name:
            problems.append(f"{module}: vLLM does not load LoRA on embeddings")
        elif not name.endswith(LORA_SUFFIXES):
            problems.append(f"{module}: a full tensor, not a LoRA factor; vLLM skips or "
                            f"refuses these (merge the adapter with 'adapterhub apply')")
        elif name.endswith(".lora_A.weight"):
            path = module.removesuffix(".lora_A.weight")
            if path.rpartition(".")[2] in EMBEDDING_MODULES:
                problems.append(f"{path}: vLLM does not load LoRA on embeddings or "
                                f"lm_head")
            ranks.append((shape[0] if shape else 0, path))
    r = config.get("r")
    if isinstance(r, int):
        over = [path for rank, path in ranks if rank > r]
        if over:
            problems.append(f"{len(over)} modules have a rank above r={r} (e.g. {over[0]})")
        limit = report.options.get("max_rank")
        if limit is not None and r > limit:
            problems.append(f"r={r} is above the server's max_lora_rank={limit}")
        elif r > VLLM_RANKS[-1]:
            problems.append(f"r={r} is above the largest rank vLLM serves ({VLLM_RANKS[-1]})")
        elif limit is None:
            needed = next(v for v in VLLM_RANKS if v >= r)
            notes.append(f"serve with --max-lora-rank {needed} or more")
    if config.get("use_rslora"):
        notes.append("use_rslora: vLLM scales by lora_alpha / sqrt(r)")
