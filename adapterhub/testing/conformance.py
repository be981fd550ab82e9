"""The method conformance suite: one set of checks every method must pass.

Subclass :class:`MethodConformance` in a test module, name the method and a config that fits
the tiny model, and pytest collects every check::

    from adapterhub.testing import MethodConformance

    class TestMyMethod(MethodConformance):
        method = "mymethod"
        config = {"r": 4}

Override ``make_model`` / ``make_inputs`` for a method that needs another architecture.
"""

from __future__ import annotations

import copy
import json
from typing import Any, ClassVar

import pytest


class TinyMLP:
    """Factory for a small model whose Linear sizes (16, 32) divide by 2, 4, 8 and 16."""

    @staticmethod
    def build(seed: int = 0):
        import torch
        from torch import nn

        torch.manual_seed(seed)

        class Model(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lin0 = nn.Linear(16, 32)
                self.act = nn.ReLU()
                self.lin1 = nn.Linear(32, 16)
                self.head = nn.Linear(16, 8)

            def forward(self, x):
                return self.head(self.lin1(self.act(self.lin0(x))))

        return Model()


class MethodConformance:
    """Checks that a method's training kernel and merge kernel agree and round-trip.

    Class attributes to set: ``method`` (the registered name) and ``config`` (a dict for
    ``attach``; it must target ``lin0`` and ``lin1`` of :class:`TinyMLP`, the default).
    """

    method: ClassVar[str]
    config: ClassVar[dict[str, Any]] = {}
    targets: ClassVar[list[str]] = ["lin0", "lin1"]
    #: tolerance for "merged forward equals unmerged forward" (relative to output scale)
    atol: ClassVar[float] = 1e-4
    train_steps: ClassVar[int] = 5

    # -- hooks a subclass may override --------------------------------------------------------

    def make_model(self):
        return TinyMLP.build()

    def make_inputs(self):
        import torch

        return torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(1))

    # -- helpers ------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {"target_modules": list(self.targets), **self.config}

    def _attached(self):
        import adapterhub

        model = self.make_model()
        layers = adapterhub.attach(model, self.method, **self._config())
        return model, layers

    def _trained(self):
        """A model whose adapter has moved away from its initial value."""
        import torch

        import adapterhub

        model, layers = self._attached()
        x = self.make_inputs()
        target = torch.randn(model(x).shape, generator=torch.Generator().manual_seed(2))
        optimizer = torch.optim.Adam(adapterhub.param_groups(model, lr=1e-2))
        model.train()
        losses = []
        for _ in range(self.train_steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), target)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        return model, layers, losses

    # -- the checks ---------------------------------------------------------------------------

    def test_registered_with_valid_config(self):
        import adapterhub

        method = adapterhub.get_method(self.method)
        assert method.name == self.method
        assert isinstance(method.format_version, int)
        config = method.make_config(self._config())
        as_json = json.loads(json.dumps(config.to_dict()))
        assert method.Config.from_dict(as_json) == config
        with pytest.raises(adapterhub.ConfigError):
            method.Config.from_dict({**as_json, "no_such_field": 1})

    def test_attach_freezes_base(self):
        import adapterhub

        model, layers = self._attached()
        assert sorted(layers) == sorted(self.targets)
        for path, layer in layers.items():
            assert isinstance(model.get_submodule(path), adapterhub.AdaptedLayer)
            assert layer.adapter_parameters(), f"{path} has no adapter parameters"
        adapter_ids = {id(p) for layer in layers.values() for p in layer.adapter_parameters()}
        for name, param in model.named_parameters():
            assert param.requires_grad == (id(param) in adapter_ids), name

    def test_identity_at_init(self):
        """A fresh adapter leaves outputs unchanged exactly when the method says it does."""
        import torch

        import adapterhub

        base = self.make_model()
        model, _ = self._attached()
        method = adapterhub.get_method(self.method)
        x = self.make_inputs()
        model.eval()
        base.eval()
        if method.identity_at_init(method.make_config(self._config())):
            torch.testing.assert_close(model(x), base(x), atol=1e-6, rtol=0)
        else:
            assert not torch.allclose(model(x), base(x), atol=1e-6, rtol=0), \
                f"{self.method} declares identity_at_init False but changes nothing"

    def test_training_moves_adapter_only(self):
        import torch

        base = self.make_model()
        model, layers, losses = self._trained()
        assert losses[-1] < losses[0], f"loss did not decrease: {losses}"
        base_state = base.state_dict()
        for path, layer in layers.items():
            for name, tensor in layer.base_layer.state_dict().items():
                assert torch.equal(tensor, base_state[f"{path}.{name}"]), \
                    f"base tensor {path}.{name} changed during training"

    def test_state_dict_round_trip(self, tmp_path):
        import torch

        import adapterhub

        model, _, _ = self._trained()
        package = adapterhub.extract(model)
        assert package.tensors, "extract returned no tensors"
        package.save(tmp_path / "pkg")
        loaded = adapterhub.AdapterPackage.load(tmp_path / "pkg")
        assert loaded.digest == package.digest
        for name, tensor in package.tensors.items():
            assert torch.equal(loaded.tensors[name], tensor), name
        fresh = self.make_model()
        adapterhub.load(fresh, loaded)
        fresh.eval()
        x = self.make_inputs()
        torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)

    def test_base_shapes_recorded(self):
        import adapterhub

        model, layers, _ = self._trained()
        modules = adapterhub.extract(model).manifest.base_model["modules"]
        assert modules == {path: list(layer.base_layer.weight.shape)
                           for path, layer in layers.items()}

    def test_merged_forward_equals_unmerged(self):
        import torch

        model, layers, _ = self._trained()
        x = self.make_inputs()
        unmerged = model(x)
        originals = {p: layer.base_layer.weight.detach().clone() for p, layer in layers.items()}
        for layer in layers.values():
            layer.merge()
            layer.merge()  # idempotent
        merged = model(x)
        scale = max(1.0, unmerged.abs().max().item())
        torch.testing.assert_close(merged, unmerged, atol=self.atol * scale, rtol=0)
        for path, layer in layers.items():
            assert not torch.equal(layer.base_layer.weight, originals[path]), \
                f"merging {path} changed nothing"
            layer.unmerge()
            torch.testing.assert_close(layer.base_layer.weight, originals[path],
                                       atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x), unmerged, atol=self.atol * scale, rtol=0)

    def test_merge_kernel_matches_live_merge(self):
        """Merging from stored tensors (the deployment path) equals merging the live layer."""
        import torch

        import adapterhub

        model, layers, _ = self._trained()
        package = adapterhub.extract(model)
        method, config = package.method, package.config
        groups = method.group_tensors(package.tensors)
        for path, layer in layers.items():
            weight = layer.base_layer.weight.detach().clone()
            from_store = method.merge(weight, path, groups[path], config)
            layer.merge()
            torch.testing.assert_close(from_store, layer.base_layer.weight, atol=1e-6, rtol=0)

    def test_low_rank_form_matches_delta(self):
        """A method that offers ΔW as factors (``low_rank``) gives exactly its dense ΔW."""
        import torch

        import adapterhub

        model, layers, _ = self._trained()
        package = adapterhub.extract(model)
        method, config = package.method, package.config
        for path, group in method.group_tensors(package.tensors).items():
            shape = tuple(layers[path].base_layer.weight.shape)
            assert method.module_kind(path, group, config) in ("linear", "conv1d", "embedding")
            factors = method.low_rank(path, group, config, shape)
            if factors is None:
                continue
            left, right = factors
            assert left.dtype == right.dtype == torch.float32
            assert left.shape[0] == shape[0] and right.shape[1] == shape[1]
            torch.testing.assert_close(left @ right,
                                       method.delta_weight(path, group, config, shape),
                                       atol=1e-6, rtol=1e-5)

    def test_merge_refuses_non_finite(self):
        import torch

        import adapterhub

        model, layers, _ = self._trained()
        package = adapterhub.extract(model)
        method, config = package.method, package.config
        groups = method.group_tensors(package.tensors)
        path = sorted(groups)[0]
        poisoned = {k: v.clone() for k, v in groups[path].items()}
        for value in poisoned.values():
            if value.is_floating_point():
                value.view(-1)[0] = float("nan")
        weight = layers[path].base_layer.weight.detach().clone()
        with pytest.raises(adapterhub.MergeError):
            method.merge(weight, path, poisoned, config)
        assert torch.isfinite(weight).all()

    def test_peft_export_round_trips_or_refuses(self, tmp_path):
        import torch

        import adapterhub
        from adapterhub.io.formats.peft import read_peft, write_peft

        model, layers, _ = self._trained()
        package = adapterhub.extract(model)
        try:
            write_peft(package, tmp_path / "peft")
        except adapterhub.ExportError:
            assert not (tmp_path / "peft").exists(), "a refused export left files behind"
            return
        back = read_peft(tmp_path / "peft")
        method = back.method
        a, b = package.method.group_tensors(package.tensors), method.group_tensors(back.tensors)
        assert sorted(b) == sorted(a)
        for path in package.manifest.base_model["modules"]:
            # merged into the real base weight: also right for methods whose change depends
            # on the base (``base_dependence``)
            weight = layers[path].base_layer.weight.detach().clone()
            torch.testing.assert_close(
                method.merge(weight, path, b[path], back.config),
                package.method.merge(weight, path, a[path], package.config),
                atol=1e-6, rtol=1e-5)

    def test_unload_keeps_outputs(self):
        import torch

        import adapterhub

        model, _, _ = self._trained()
        x = self.make_inputs()
        before = model(x)
        stripped = adapterhub.unload(copy.deepcopy(model), merge=False)
        base = self.make_model().eval()
        torch.testing.assert_close(stripped(x), base(x), atol=0, rtol=0)
        plain = adapterhub.unload(model, merge=True)
        assert not any(isinstance(m, adapterhub.AdaptedLayer) for m in plain.modules())
        scale = max(1.0, before.abs().max().item())
        torch.testing.assert_close(plain(x), before, atol=self.atol * scale, rtol=0)
