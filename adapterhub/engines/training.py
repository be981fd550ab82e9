"""Training an adapter on a transformers model from a JSONL file (``adapterhub train``).

The loop is generic: it attaches any registered method, asks it for optimizer groups
(:func:`adapterhub.param_groups`, where LoRA+ boosts B), and extracts the result as an
:class:`~adapterhub.io.package.AdapterPackage` whose manifest records the metrics. Nothing here
knows a particular method.

Data (one JSON object per line; blank lines are skipped, other keys are ignored):

- ``classification``: ``{"text": "...", "label": 0}`` or ``{"text": "...", "label": "pos"}``
  (integers ``0..k-1``, or strings mapped to ids in sorted order; not both in one file);
- ``causal-lm``: ``{"text": "..."}`` (loss on every non-padding token);
- routing data for a composite version, such as a mixture of experts
  (:func:`train_composite`): ``{"text": "...",
  "task": "sports"}``, where ``task`` names the expert that should take the row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from adapterhub.contracts.config import MethodConfig
from adapterhub.contracts.method import AdapterMethod
from adapterhub.errors import ConfigError, FormatError
from adapterhub.io.checkpoint import Checkpoint
from registry_db.digests import parse_json

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterhub.io.package import AdapterPackage

TASKS = ("classification", "causal-lm")


@dataclass(frozen=True)
class Dataset:
    """Examples read from a JSONL file: texts, and label ids for classification."""

    task: str
    texts: list[str]
    labels: list[int] | None = None
    #: the label strings by id when the file used string labels, else None
    label_names: list[str] | None = None
    source: str = ""
    sha256: str = ""

    @property
    def num_labels(self) -> int | None:
        if self.labels is None:
            return None
        return len(self.label_names) if self.label_names else max(self.labels) + 1

    def __len__(self) -> int:
        return len(self.texts)


def read_jsonl(path: str | os.PathLike[str], task: str) -> Dataset:
    """Read and validate a training file; a bad line raises :class:`FormatError` naming it."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    path = Path(path)
    records, digest = _read_records(path)
    texts: list[str] = []
    labels: list[int | str] = []
    for where, record in records:
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise FormatError(f"{where}: \"text\" must be a non-empty string",
                              hint=_schema_hint(task))
        texts.append(text)
        if task == "classification":
            labels.append(_label(record, where, labels[0] if labels else None))
    if not texts:
        raise FormatError(f"{path} holds no examples", hint=_schema_hint(task))
    if task != "classification":
        return Dataset(task, texts, source=path.name, sha256=digest)
    names = sorted(set(labels)) if isinstance(labels[0], str) else None
    ids = [names.index(v) for v in labels] if names else [int(v) for v in labels]
    if len(set(ids)) < 2:
        raise FormatError(f"{path}: classification needs at least two distinct labels; every "
                          f"example has label {labels[0]!r}")
    return Dataset(task, texts, ids, names, path.name, digest)


def _read_records(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """``("file:line", object)`` for each non-blank line of a JSONL file, and its digest."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read the data file {path}: {exc.strerror}") from None
    records = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = parse_json(line.decode("utf-8-sig"), what=where)
        except UnicodeDecodeError:
            raise FormatError(f"{where}: not UTF-8 text") from None
        if not isinstance(record, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        records.append((where, record))
    return records, "sha256:" + hashlib.sha256(raw).hexdigest()


def _label(record: dict[str, Any], where: str, first: int | str | None) -> int | str:
    if "label" not in record:
        raise FormatError(f"{where}: missing \"label\"", hint=_schema_hint("classification"))
    label = record["label"]
    if isinstance(label, bool) or not isinstance(label, (int, str)) or label == "" or \
            (isinstance(label, int) and label < 0):
        raise FormatError(f"{where}: \"label\" must be an integer >= 0 or a non-empty string; "
                          f"got {label!r}")
    if first is not None and isinstance(label, str) != isinstance(first, str):
        raise FormatError(f"{where}: label {label!r} mixes integer and string labels in one "
                          f"file")
    return label


def _schema_hint(task: str) -> str:
    if task == "classification":
        return 'Each line must be {"text": "...", "label": 0} (or a string label)'
    return 'Each line must be {"text": "..."}'


def load_base(base: str | os.PathLike[str], task: str, *, num_labels: int | None = None,
              seed: int = 0, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """The transformers model for ``task`` and its tokenizer, from a local model directory.

    For classification, a head the checkpoint lacks is created by transformers with random
    weights, drawn after ``torch.manual_seed(seed)``: the same seed rebuilds the same head, which
    is how a trained adapter is used again (the head stays frozen during training).
    """
    import torch
    import transformers

    base = Path(base)
    if not (base / "config.json").is_file():
        raise FormatError(f"{base} is not a transformers model directory (no config.json)")
    Checkpoint(base)  # safetensors weights only: refuses pickle-only directories first
    auto = {"classification": transformers.AutoModelForSequenceClassification,
            "causal-lm": transformers.AutoModelForCausalLM}[task]
    extra = {"num_labels": num_labels} if task == "classification" else {}
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # "newly initialized weights" is expected
    transformers.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(base)
        torch.manual_seed(seed)
        model = auto.from_pretrained(base, dtype=dtype or torch.float32, use_safetensors=True,
                                     **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise FormatError(f"cannot load a {task} model from {base}: "
                          f"{str(exc).splitlines()[0]}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise FormatError(f"the tokenizer in {base} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train(base: str | os.PathLike[str], data: str | os.PathLike[str] | Dataset, *,
          task: str, method: str | AdapterMethod = "lora",
          config: MethodConfig | dict[str, Any] | None = None, epochs: int = 1,
          lr: float = 2e-4, batch_size: int = 8, max_length: int = 128,
          eval_fraction: float = 0.1, seed: int = 0, device: str | None = None,
          log_every: int = 10, on_log: Callable[[dict[str, Any]], None] | None = None,
          show_progress: bool = True, labels: dict[str, Any] | None = None,
          parents: tuple[str, ...] = ()) -> AdapterPackage:
    """Train an adapter of ``method`` on the model in ``base`` and return it as a package.

    ``data`` is a JSONL file (see the module docstring) or a :class:`Dataset`. A fraction
    ``eval_fraction`` of the examples (shuffled with ``seed``) is held out and evaluated after
    training. The optimizer is AdamW over :func:`adapterhub.param_groups` at a constant ``lr``
    without weight decay (a method's groups may set their own). ``on_log`` receives
    ``{"step", "steps", "epoch", "loss"}`` every ``log_every`` steps and at the end.

    The package's manifest records ``metrics`` (``final_loss`` = mean of the last
    ``log_every`` steps, ``steps``, ``epochs``, ``train_examples``, ``eval_examples``,
    ``eval_loss``, ``eval_accuracy`` for classification) and ``labels["training"]`` (task,
    data file and digest, hyper-parameters, seed, labels), merged with ``labels``.
    """
    import torch

    from adapterhub.contracts.plugins import get_method
    from adapterhub.contracts.progress import progress
    from adapterhub.engines.adapters import attach, extract, param_groups

    dataset = data if isinstance(data, Dataset) else read_jsonl(data, task)
    if dataset.task != task:
        raise ConfigError(f"the data was read for task {dataset.task!r}, not {task!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("max_length", max_length), ("log_every", log_every)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"lr must be a positive number; got {lr!r}")
    if not 0 <= eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be in [0, 1); got {eval_fraction!r}")
    method_obj = get_method(method) if isinstance(method, str) else method
    config_obj = method_obj.make_config(config)

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    n_eval = int(len(dataset) * eval_fraction)
    if n_eval >= len(dataset):
        raise ConfigError(f"eval_fraction={eval_fraction} leaves no training examples out of "
                          f"{len(dataset)}")
    eval_idx, train_idx = order[:n_eval], order[n_eval:]

    model, tokenizer = load_base(base, task, num_labels=dataset.num_labels, seed=seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    attach(model, method_obj, config_obj)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, lr), lr=lr, weight_decay=0.0)

    def batch(indices: list[int]) -> dict[str, torch.Tensor]:
        enc = tokenizer([dataset.texts[i] for i in indices], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        if task == "classification":
            enc["labels"] = torch.tensor([dataset.labels[i] for i in indices], device=device)
        else:
            enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return enc

    per_epoch = math.ceil(len(train_idx) / batch_size)
    total = per_epoch * epochs
    recent: list[float] = []
    step = 0
    model.train()
    with progress(total=total, desc=f"train {method_obj.name}", unit="step",
                  disable=not show_progress) as bar:
        for epoch in range(1, epochs + 1):
            shuffled = [train_idx[i] for i in
                        torch.randperm(len(train_idx), generator=generator).tolist()]
            for start in range(0, len(shuffled), batch_size):
                loss = model(**batch(shuffled[start:start + batch_size])).loss
                if not torch.isfinite(loss):
                    raise ConfigError(f"the loss became {loss.item()} at step {step + 1}",
                                      hint="Lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                recent = (recent + [loss.item()])[-log_every:]
                bar.update(1)
                bar.set_postfix(loss=f"{recent[-1]:.4f}")
                if on_log is not None and (step % log_every == 0 or step == total):
                    on_log({"step": step, "steps": total, "epoch": epoch,
                            "loss": sum(recent) / len(recent)})
    model.eval()

    metrics: dict[str, Any] = {"final_loss": sum(recent) / len(recent), "steps": step,
                               "epochs": epochs, "train_examples": len(train_idx),
                               "eval_examples": len(eval_idx)}
    if eval_idx:
        metrics.update(evaluate(model, [batch(eval_idx[i:i + batch_size])
                                        for i in range(0, len(eval_idx), batch_size)], task))
    training = {"task": task, "data": dataset.source, "data_sha256": dataset.sha256,
                "epochs": epochs, "lr": lr, "batch_size": batch_size, "max_length": max_length,
                "eval_fraction": eval_fraction, "seed": seed, "optimizer": "adamw"}
    if task == "classification":
        training["num_labels"] = dataset.num_labels
        if dataset.label_names:
            training["label_names"] = dataset.label_names
    return extract(model, base=base, metrics=metrics,
                   labels={"training": training, **(labels or {})}, parents=parents)


def read_routing_jsonl(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Texts and the expert (``task``) each should go to; a bad line names itself."""
    texts, tasks = [], []
    for where, record in _read_records(Path(path))[0]:
        text, task = record.get("text"), record.get("task")
        if not isinstance(text, str) or not text.strip() or not isinstance(task, (str, int)) \
                or isinstance(task, bool):
            raise FormatError(f"{where}: routing rows need a non-empty \"text\" and a "
                              f"\"task\" naming an expert",
                              hint='Each line must be {"text": "...", "task": "<expert name>"}')
        texts.append(text)
        tasks.append(str(task))
    if not texts:
        raise FormatError(f"{path} holds no examples")
    return texts, tasks


def train_composite(base: str | os.PathLike[str], data: str | os.PathLike[str], *,
                    task: str, method: str | AdapterMethod, experts: list[AdapterPackage],
                    epochs: int = 30, lr: float = 1e-3, batch_size: int = 32,
                    max_length: int = 128, seed: int = 0, show_progress: bool = True,
                    labels: dict[str, Any] | None = None) -> AdapterPackage:
    """Build a version of a composite ``method`` (see :attr:`AdapterMethod.composite`) over
    frozen component versions ``experts`` on the model in ``base``, from routing data (see the
    module docstring).

    The components must have been trained for the same ``task`` with the same seed (so a
    classification head the checkpoint lacks is rebuilt identically for all of them).
    """
    from adapterhub.contracts.plugins import get_method

    method_obj = get_method(method) if isinstance(method, str) else method
    if not method_obj.composite:
        raise ConfigError(f"the {method_obj.name!r} method is not composite: it does not "
                          f"combine other versions",
                          hint="--experts goes with a composite method (see 'adapterhub "
                               "methods')")
    if not experts:
        raise ConfigError("a composite version needs at least one component version")
    settings = {json.dumps({k: e.manifest.labels.get("training", {}).get(k)
                            for k in ("task", "seed", "num_labels")}, sort_keys=True)
                for e in experts}
    if len(settings) > 1:
        raise ConfigError("the experts were trained with different tasks, seeds or label "
                          "counts, so they do not share one frozen head",
                          hint="Train every expert with the same --task and --seed")
    trained = experts[0].manifest.labels.get("training", {})
    if trained.get("task") not in (None, task):
        raise ConfigError(f"the experts were trained for {trained['task']!r}, not {task!r}")
    texts, tasks = read_routing_jsonl(data)
    model, tokenizer = load_base(base, task, num_labels=trained.get("num_labels"),
                                 seed=trained.get("seed", seed))
    inputs = dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt"))
    package = method_obj.train_composite(model, experts, inputs, tasks, epochs=epochs, lr=lr,
                                         batch_size=batch_size, seed=seed,
                                         show_progress=show_progress)
    if labels:
        package = package.with_manifest(labels={**package.manifest.labels, **labels})
    return package


def evaluate(model: nn.Module, batches: list[dict[str, torch.Tensor]], task: str
             ) -> dict[str, float]:
    """Mean loss over ``batches`` (weighted by examples or tokens), and accuracy if classifying."""
    import torch

    loss_sum, weight_sum, correct, count = 0.0, 0, 0, 0
    with torch.no_grad():
        for enc in batches:
            out = model(**enc)
            if task == "classification":
                weight = len(enc["labels"])
                correct += int((out.logits.argmax(-1) == enc["labels"]).sum())
                count += weight
            else:
                weight = int((enc["labels"][:, 1:] != -100).sum())
            loss_sum += out.loss.item() * weight
            weight_sum += weight
    result = {"eval_loss": loss_sum / max(weight_sum, 1)}
    if task == "classification":
        result["eval_accuracy"] = correct / count
    return result
