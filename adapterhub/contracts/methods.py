"""The method and quantizer contracts.

An :class:`AdapterMethod` brings a *training kernel* (the adapted layer it puts in place of a
base layer, its optimizer groups) and a *merge kernel* (its dense delta, folded into a base
weight). Everything here is importable without torch; torch is imported inside the functions
that need it, so loading a plugin stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Self, Union, get_args, get_origin

from adapterhub.errors import ConfigError, ExportError, FormatError, MergeError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterhub.contracts.layers import AdaptedLayer
    from adapterhub.io.package import AdapterPackage

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclasses.dataclass
class ConfigBase:
    """A validated, JSON-able dataclass: the base of method and quantizer configs.

    Subclasses are ``@dataclasses.dataclass`` classes whose fields all have defaults and carry
    ``metadata={"help": "..."}``. ``validate`` raises :class:`ConfigError` quoting the bad value.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check field values; raise :class:`ConfigError` naming the field and the value."""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types (what manifests store)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build a config from a dict, refusing unknown fields."""
        if not isinstance(data, dict):
            raise ConfigError(f"a method config must be a JSON object; got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)} for "
                              f"{cls.__name__}; known fields: {', '.join(sorted(names))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid config for {cls.__name__}: {exc}") from None

    @classmethod
    def from_strings(cls, pairs: Iterable[str]) -> Self:
        """Build a config from ``KEY=VALUE`` strings (the CLI's ``--config``).

        A value is read as JSON when it parses (``16``, ``true``, ``["q","v"]``), a list field
        also takes ``a,b,c``, and anything else is a string.
        """
        data: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ConfigError(f"config entries are KEY=VALUE; got {pair!r}")
            try:
                value: Any = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if isinstance(value, str) and "," in value and _accepts_list(hints.get(key)):
                value = [part.strip() for part in value.split(",") if part.strip()]
            data[key] = value
        return cls.from_dict(data)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Each field's name, type, default and help text (for ``adapterhub methods``)."""
        out = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            out.append({"name": f.name, "type": _type_name(hints.get(f.name, f.type)),
                        "default": default, "help": f.metadata.get("help", "")})
        return out


@dataclasses.dataclass
class MethodConfig(ConfigBase):
    """Base class of every method's config (see :class:`ConfigBase`)."""

    target_modules: list[str] | str | None = dataclasses.field(
        default=None,
        metadata={"help": "module names (matched on the last path parts), a regex matched on the "
                          "whole path, or 'all-linear'; None uses the architecture's default"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (tuple, set)):
            self.target_modules = sorted(self.target_modules)
        if self.target_modules is not None and not isinstance(self.target_modules, (str, list)):
            raise ConfigError(f"target_modules must be a list of names or a regex string; "
                              f"got {self.target_modules!r}")
        super().__post_init__()


@dataclasses.dataclass
class QuantizerConfig(ConfigBase):
    """Base class of every quantizer's config (see :class:`ConfigBase`)."""


def _accepts_list(hint: Any) -> bool:
    if hint is None:
        return False
    if get_origin(hint) is list or hint is list:
        return True
    if get_origin(hint) in (Union, types.UnionType):
        return any(_accepts_list(arg) for arg in get_args(hint))
    return False


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


class AdapterMethod:
    """A parameter-efficient fine-tuning method: training kernel plus merge kernel.

    Subclasses set ``name``, ``format_version``, ``Config`` and implement ``make_layer`` and
    ``delta_weight``; the other operations have working defaults built on those two.

    Tensor names in a method's state dict are ``"<module path>.<tensor>"`` where ``<tensor>``
    contains no dot (``encoder.layer.0.attention.self.query.lora_A``).
    """

    name: ClassVar[str]
    format_version: ClassVar[int] = 1
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    description: ClassVar[str] = ""
    #: layer kinds (see :func:`adapterhub.contracts.targets.layer_kind`) the method can adapt
    layer_kinds: ClassVar[tuple[str, ...]] = ("linear", "conv1d")
    #: the PEFT ``peft_type`` this method exports to and imports from, if PEFT can express it
    peft_type: ClassVar[str | None] = None
    #: ``adapter_config.json`` entries that mark this method's adapters among the PEFT adapters
    #: of its ``peft_type`` (DoRA: ``{"use_dora": True}`` within ``LORA``); an import picks the
    #: installed method whose entries all match, the most entries first
    peft_flags: ClassVar[dict[str, Any]] = {}
    #: Why the method's change to a layer depends on that layer's base weight, or ``""`` when
    #: ΔW is a function of the adapter's tensors alone. A method that rescales ``W + ΔW``
    #: (DoRA) has no ΔW without its base: it implements :meth:`merge` (which gets the weight)
    #: and its ``delta_weight``/``low_rank`` refuse or return ``None``. ``apply`` then folds it
    #: through :meth:`merge` with the whole base tensor in memory, and whatever combines or
    #: exports adapters without a base (merge strategies, LoRA-only engines) refuses it, giving
    #: this reason.
    base_dependence: ClassVar[str] = ""

    # -- config -----------------------------------------------------------------------------

    def make_config(self, config: MethodConfig | dict[str, Any] | None = None,
                    **kwargs: Any) -> MethodConfig:
        """Coerce a config object, a dict, or keyword arguments into ``self.Config``."""
        if isinstance(config, self.Config):
            if kwargs:
                return self.Config.from_dict({**config.to_dict(), **kwargs})
            return config
        return self.Config.from_dict({**(config or {}), **kwargs})

    def identity_at_init(self, config: MethodConfig) -> bool:
        """Whether a freshly attached adapter leaves the model's outputs unchanged."""
        return True

    # -- training kernel --------------------------------------------------------------------

    def make_layer(self, base: nn.Module, config: MethodConfig, path: str) -> AdaptedLayer:
        """Wrap one base layer in this method's adapted layer (base weights stay frozen)."""
        raise NotImplementedError

    def attach(self, model: nn.Module, config: MethodConfig,
               targets: list[str] | None = None) -> dict[str, AdaptedLayer]:
        """Replace each targeted layer of ``model`` with the method's adapted layer.

        ``targets`` (exact module paths) overrides ``config.target_modules``. Returns the
        adapted layers by module path. Every base parameter of the model is frozen.
        """
        from adapterhub.contracts.targets import find_targets

        found = find_targets(model, config.target_modules if targets is None else targets,
                             kinds=self.layer_kinds, method=self.name, exact=targets is not None)
        self.check_targets(found, config)
        for param in model.parameters():
            param.requires_grad_(False)
        layers = {}
        for path, module in found:
            layer = self.make_layer(module, config, path)
            model.set_submodule(path, layer)
            layers[path] = layer
        return layers

    def check_targets(self, targets: list[tuple[str, nn.Module]], config: MethodConfig) -> None:
        """Validate (or adjust ``config`` for) the layers about to be adapted, before any change."""

    def param_groups(self, model: nn.Module, lr: float, **kwargs: Any) -> list[dict[str, Any]]:
        """Optimizer parameter groups for the adapter's trainable tensors.

        The default is one group at ``lr``; keyword arguments (``weight_decay`` ...) are copied
        into it.
        """
        params = [p for layer in adapted_layers(model).values()
                  for p in layer.adapter_parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, **kwargs}]

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The adapter's tensors only, keyed ``"<module path>.<tensor>"``, detached on CPU."""
        out = {}
        for path, layer in adapted_layers(model).items():
            for key, tensor in layer.adapter_tensors().items():
                out[f"{path}.{key}"] = tensor.detach().to("cpu").clone()
        return out

    def experts(self, config: MethodConfig) -> dict[str, str]:
        """For a version that routes between other versions at run time (a mixture of
        experts), its experts by name → version digest; empty for an ordinary adapter.

        A version with experts has no single ΔW: ``apply``/``merge`` fold one expert, chosen
        by name (``--expert``), and loading it needs the expert versions.
        """
        return {}

    def train_mixture(self, model: nn.Module, experts: list[AdapterPackage],
                      inputs: dict[str, torch.Tensor], expert_labels: list[str], *,
                      epochs: int, lr: float, batch_size: int, seed: int,
                      show_progress: bool = True) -> AdapterPackage:
        """Train a mixture-of-experts version over frozen ``experts`` (its router, say) on
        tokenized ``inputs`` whose rows are labelled with the expert that should take them.

        Only methods with :meth:`experts` implement this; ``adapterhub train --experts``
        calls it.
        """
        raise ConfigError(f"the {self.name!r} method does not combine experts",
                          hint="--experts goes with a mixture-of-experts method such as "
                               "ttlora_moe")

    def load(self, model: nn.Module, tensors: dict[str, torch.Tensor],
             config: MethodConfig, experts: list[AdapterPackage] | None = None
             ) -> dict[str, AdaptedLayer]:
        """Attach to the modules ``tensors`` names and load the values into the new layers.

        ``experts`` are the expert versions of a method whose :meth:`experts` is not empty.
        """
        by_module = self.group_tensors(tensors)
        layers = self.attach(model, config, targets=sorted(by_module))
        for path, layer in layers.items():
            layer.load_adapter_tensors(by_module[path])
        return layers

    # -- merge kernel -----------------------------------------------------------------------

    def group_tensors(self, tensors: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Split ``{"<path>.<tensor>": t}`` into ``{path: {tensor: t}}``."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in tensors.items():
            path, sep, leaf = key.rpartition(".")
            if not sep:
                raise FormatError(f"tensor name {key!r} has no module path")
            out.setdefault(path, {})[leaf] = value
        return out

    def infer_base_shape(self, module: str, tensors: dict[str, torch.Tensor],
                         config: MethodConfig) -> tuple[int, ...]:
        """The shape of the base weight this module's tensors adapt, as stored in checkpoints."""
        raise NotImplementedError

    def delta_weight(self, module: str, tensors: dict[str, torch.Tensor], config: MethodConfig,
                     base_shape: tuple[int, ...]) -> torch.Tensor:
        """The dense ΔW for one module, in fp32, in the base weight's layout and shape."""
        raise NotImplementedError

    def merge(self, weight: torch.Tensor, module: str, tensors: dict[str, torch.Tensor],
              config: MethodConfig, *, scale: float = 1.0) -> torch.Tensor:
        """Return ``weight + scale·ΔW``: the add in fp32, one cast back, a finiteness check.

        ``weight`` is the base weight as stored (``[in, out]`` for Conv1D). A method with
        :attr:`base_dependence` overrides this; its ΔW is ``merge(weight) − weight``.
        """
        delta = self.delta_weight(module, tensors, config, tuple(weight.shape))
        return fold_delta(weight, delta, scale=scale, what=f"{self.name} adapter on {module}")

    def low_rank(self, module: str, tensors: dict[str, torch.Tensor], config: MethodConfig,
                 base_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """ΔW as fp32 factors ``(L, R)`` with ``L @ R == delta_weight(...)``, or ``None``.

        ``L`` is ``[base_shape[0], k]`` and ``R`` is ``[k, base_shape[1]]``, in the base weight's
        layout, with every scaling folded in. Methods whose delta is a low-rank product (LoRA,
        block-diagonal variants) return it so that merges stay exact and cheap (``cat``), and
        so that exports to LoRA-only engines (vLLM) can express them; the default ``None``
        sends merges through the dense ΔW.
        """
        return None

    def module_kind(self, module: str, tensors: dict[str, torch.Tensor],
                    config: MethodConfig) -> str:
        """The kind of layer a module adapts: ``linear``, ``conv1d`` (weight stored ``[in,
        out]``) or ``embedding`` — what a merge needs to lay out a new LoRA for it."""
        return "linear"

    def from_low_rank(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      kinds: dict[str, str]) -> tuple[MethodConfig, dict[str, torch.Tensor]]:
        """``(config, tensors)`` of an adapter whose ΔW for each module is ``L @ R``.

        ``factors`` maps module paths to ``(L, R)`` in the base weight's layout and ``kinds``
        each module to its layer kind (see :meth:`module_kind`). The method merges store
        their results as (LoRA) implements this; others need not.
        """
        raise MergeError(f"the {self.name!r} method cannot be built from low-rank factors")

    # -- formats ----------------------------------------------------------------------------

    def to_peft(self, package: AdapterPackage) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(adapter_config, tensors with PEFT keys)`` for ``export --format peft``."""
        raise ExportError(f"PEFT cannot express the {self.name!r} method",
                          hint="Keep the native format, or use 'adapterhub apply' to merge it "
                               "into the base model")

    def from_peft(self, adapter_config: dict[str, Any], tensors: dict[str, torch.Tensor]
                  ) -> tuple[MethodConfig, dict[str, torch.Tensor]]:
        """``(config, native tensors)`` from a PEFT ``adapter_config.json`` and its tensors."""
        raise FormatError(f"the {self.name!r} method cannot read PEFT adapters")


def fold_delta(weight: torch.Tensor, delta: torch.Tensor, *, scale: float = 1.0,
               what: str = "delta") -> torch.Tensor:
    """``weight + scale·delta`` computed in fp32 with one cast back; refuses non-finite results.

    The check runs on the cast result, so a sum that overflows the weight's dtype (fp16) is
    refused too.
    """
    import torch

    if tuple(delta.shape) != tuple(weight.shape):
        raise MergeError(f"{what}: delta shape {tuple(delta.shape)} does not match the base "
                         f"weight {tuple(weight.shape)}")
    merged = torch.add(weight.to(torch.float32),
                       delta.to(device=weight.device, dtype=torch.float32), alpha=scale)
    merged = merged.to(weight.dtype)
    check_finite(merged, what)
    return merged


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`MergeError` if a merged weight holds NaN or Inf values."""
    import torch

    if not torch.isfinite(tensor).all():
        raise MergeError(f"{what}: merging produced NaN or Inf values",
                         hint="The adapter's tensors are corrupt or diverged (or the sum "
                              "overflows the output dtype); retrain or pick another version")


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLayer]:
    """Every adapterhub adapted layer inside ``model``, by module path."""
    from adapterhub.contracts.layers import AdaptedLayer

    return {path: module for path, module in model.named_modules()
            if isinstance(module, AdaptedLayer)}


@dataclasses.dataclass
class QuantizedTensor:
    """One quantized weight: packed data, named state tensors, and what it stands for.

    ``state`` holds the quantizer's tensors by name (for NF4: ``absmax``, ``quant_map``, ...);
    ``shape`` and ``dtype`` are those of the weight it was made from; ``quantizer`` is the
    registered name and ``config`` the config it was quantized with, so that
    ``get_quantizer(q.quantizer).dequantize(q)`` needs nothing else.
    """

    quantizer: str
    config: QuantizerConfig
    data: torch.Tensor
    state: dict[str, torch.Tensor]
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed data and every state tensor."""
        return sum(t.numel() * t.element_size() for t in (self.data, *self.state.values()))


class Quantizer:
    """A base-weight quantizer (NF4, FP4, ...), composable with any LoRA-family method.

    Subclasses set ``name`` and ``Config`` and implement:

    * ``quantize``/``dequantize`` — a weight to a :class:`QuantizedTensor` and back;
    * ``bits_per_param`` — storage cost, constants included;
    * ``linear_from`` — a frozen Linear computing with the dequantized weight, whose class
      declares ``adapterhub_layer_kind = "linear"`` so adapters attach to it, and which carries
      ``adapterhub_quantization = {"name": ..., "config": {...}}`` for the manifest (it may
      define ``merge_delta``/``unmerge_delta``, see :class:`~adapterhub.AdaptedLayer`);
      ``make_linear`` quantizes an ``nn.Linear`` into one;
    * ``state_dict``/``stored_weights``/``from_state_dict`` — the checkpoint layout, so that
      quantized checkpoints are written and read without the reader knowing the format;
    * ``checkpoint_config`` — what to record in a quantized checkpoint's ``config.json``;
    * optionally ``describe_stored`` (a stored weight's shape, dtype and config from its
      metadata alone, for compatibility checks) and ``compute_fields`` (config fields that do
      not change the stored values, see ``storage_config``).
    """

    name: ClassVar[str]
    Config: ClassVar[type[QuantizerConfig]] = QuantizerConfig
    description: ClassVar[str] = ""
    #: config fields that say how a quantized weight is computed with, not what is stored
    #: (NF4: ``compute_dtype``); two configs that differ only there quantize a weight alike
    compute_fields: ClassVar[tuple[str, ...]] = ()

    def make_config(self, config: QuantizerConfig | dict[str, Any] | None = None,
                    **kwargs: Any) -> QuantizerConfig:
        """Coerce a config object, a dict, or keyword arguments into ``self.Config``."""
        if isinstance(config, self.Config):
            return self.Config.from_dict({**config.to_dict(), **kwargs}) if kwargs else config
        return self.Config.from_dict({**(config or {}), **kwargs})

    def storage_config(self, config: QuantizerConfig | dict[str, Any] | None) -> dict[str, Any]:
        """The fields of ``config`` that decide the stored values (``compute_fields`` left
        out): equal for two configs exactly when they quantize every weight to the same bytes."""
        return {key: value for key, value in self.make_config(config).to_dict().items()
                if key not in self.compute_fields}

    def bits_per_param(self, config: QuantizerConfig) -> float:
        """Average storage bits per quantized parameter, constants included."""
        raise NotImplementedError

    def quantize(self, weight: torch.Tensor, config: QuantizerConfig) -> QuantizedTensor:
        """Quantize one weight (any shape, a floating dtype)."""
        raise NotImplementedError

    def dequantize(self, quantized: QuantizedTensor,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight the quantized tensor stands for, in ``dtype`` (default: its own dtype)."""
        raise NotImplementedError

    def make_linear(self, linear: nn.Module, config: QuantizerConfig) -> nn.Module:
        """A frozen quantized replacement for ``linear`` with the same forward signature."""
        return self.linear_from(self.quantize(linear.weight.detach(), config), linear.bias)

    def linear_from(self, quantized: QuantizedTensor, bias: torch.Tensor | None) -> nn.Module:
        """The quantized Linear computing with ``quantized`` (and ``bias``, kept as it is)."""
        raise NotImplementedError

    # -- checkpoint layout ------------------------------------------------------------------

    def state_dict(self, quantized: QuantizedTensor, name: str) -> dict[str, torch.Tensor]:
        """The checkpoint tensors storing ``quantized`` as the weight called ``name``."""
        raise NotImplementedError

    def stored_weights(self, names: Iterable[str]) -> dict[str, list[str]]:
        """Among checkpoint tensor ``names``, the weights this quantizer stored.

        Returns ``{weight name: [every tensor name that belongs to it]}``.
        """
        raise NotImplementedError

    def from_state_dict(self, name: str, tensors: dict[str, torch.Tensor]) -> QuantizedTensor:
        """Rebuild the weight ``name`` from its checkpoint tensors (as ``stored_weights`` lists)."""
        raise NotImplementedError

    def describe_stored(self, name: str, shapes: dict[str, tuple[int, ...]],
                        read: Callable[[str], torch.Tensor]
                        ) -> tuple[tuple[int, ...], torch.dtype, QuantizerConfig]:
        """The shape, dtype and config of the weight ``name`` stored in a checkpoint, without
        dequantizing it: what a compatibility check needs before anything is built.

        ``shapes`` are the header shapes of its tensors (as ``stored_weights`` lists them);
        ``read(tensor name)`` reads one of them. This default reads them all; a quantizer
        whose metadata sits in a small tensor reads just that one.
        """
        quantized = self.from_state_dict(name, {key: read(key) for key in shapes})
        return quantized.shape, quantized.dtype, quantized.config

    def checkpoint_config(self, config: QuantizerConfig, skipped: list[str]) -> dict[str, Any]:
        """The ``quantization_config`` entry for ``config.json`` (``skipped``: modules left as
        they were)."""
        raise NotImplementedError
