"""The method contract.

An :class:`AdapterMethod` brings a *training kernel* (the adapted layer it puts in place of a
base layer, its optimizer groups) and a *merge kernel* (its dense delta, folded into a base
weight). Importable without torch; torch is imported inside the functions that need it, so
loading a plugin stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from adapterhub.contracts.config import MethodConfig
from adapterhub.contracts.numerics import fold_delta
from adapterhub.errors import ConfigError, ExportError, FormatError, MergeError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterhub.contracts.layers import AdaptedLayer
    from adapterhub.io.package import AdapterPackage


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
    #: layer kinds (see :func:`adapterhub.contracts.layers.layer_kind`) the method can adapt
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
    #: A composite method's versions are made of other versions, its *components* (named in
    #: the config, listed by :meth:`components`): a router over frozen experts, say. Such a
    #: version is built by :meth:`train_composite`, not attached fresh nor extracted; it has
    #: no single ΔW (``apply`` and ``merge`` fold one component, chosen by name); loading it
    #: fetches its components. The core does all of that for any method that sets this.
    composite: ClassVar[bool] = False
    #: Whether the method can hold any ΔW given as low-rank factors (:meth:`from_low_rank`):
    #: merges are stored with such a method, and exports to LoRA-only serving engines go
    #: through it. Counted only on the class that declares it (a subclass that inherits it,
    #: such as a LoRA variant, is not a second candidate).
    stores_low_rank: ClassVar[bool] = False
    #: for a composite method: how to build a version (shown when one is attached or extracted)
    composite_hint: ClassVar[str] = "Train the components first, then build it with " \
        "train_composite (adapterhub train --experts)"

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
        from adapterhub.contracts.layers import find_targets

        if self.composite:
            raise ConfigError(f"a {self.name} adapter is made of other versions (its "
                              f"components), not attached fresh", hint=self.composite_hint)
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
        from adapterhub.contracts.layers import adapted_layers

        params = [p for layer in adapted_layers(model).values()
                  for p in layer.adapter_parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, **kwargs}]

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The adapter's tensors only, keyed ``"<module path>.<tensor>"``, detached on CPU."""
        from adapterhub.contracts.layers import adapted_layers

        if self.composite:
            raise ConfigError(f"a {self.name} version cannot be extracted from a model: it "
                              f"records its components, which the model does not know",
                              hint=self.composite_hint)
        out = {}
        for path, layer in adapted_layers(model).items():
            for key, tensor in layer.adapter_tensors().items():
                out[f"{path}.{key}"] = tensor.detach().to("cpu").clone()
        return out

    def components(self, config: MethodConfig) -> dict[str, str]:
        """The versions a composite version is made of, by name → version digest (see
        :attr:`composite`); empty for an ordinary adapter."""
        return {}

    def train_composite(self, model: nn.Module, components: list[AdapterPackage],
                        inputs: dict[str, torch.Tensor], labels: list[str], *, epochs: int,
                        lr: float, batch_size: int, seed: int, show_progress: bool = True
                        ) -> AdapterPackage:
        """Build a composite version over frozen ``components`` (train its router, say) on
        tokenized ``inputs`` whose rows are labelled with the component that should take
        them. ``adapterhub train --experts`` calls it."""
        raise ConfigError(f"the {self.name!r} method is not composite: it does not combine "
                          f"other versions", hint="--experts goes with a composite method "
                                                  "(see 'adapterhub methods')")

    def load(self, model: nn.Module, tensors: dict[str, torch.Tensor],
             config: MethodConfig, components: list[AdapterPackage] | None = None
             ) -> dict[str, AdaptedLayer]:
        """Attach to the modules ``tensors`` names and load the values into the new layers.

        ``components`` are the versions a composite version is made of.
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
        if self.composite:
            raise self.no_single_delta(config)
        raise NotImplementedError

    def no_single_delta(self, config: MethodConfig) -> MergeError:
        """The error for folding or merging a composite version as a whole."""
        names = ", ".join(self.components(config))
        return MergeError(f"a {self.name} version is made of other versions ({names}), so it "
                          f"has no single ΔW", hint="Pick the component to fold in (CLI: "
                                                    "--expert NAME)")

    def merge(self, weight: torch.Tensor, module: str, tensors: dict[str, torch.Tensor],
              config: MethodConfig, *, scale: float = 1.0) -> torch.Tensor:
        """Return ``weight + scale·ΔW``: the add in fp32, one cast back, a finiteness check.

        ``weight`` is the base weight as stored (``[in, out]`` for Conv1D). A method with
        :attr:`base_dependence` overrides this; its ΔW is ``merge(weight) − weight``.
        """
        if self.composite:
            raise self.no_single_delta(config)
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
