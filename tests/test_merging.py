"""Merge strategies: the combination functions on hand-made tensors, each strategy against its
formula on small LoRA packages, exactness of cat, determinism, lineage, mixed methods, and
parity with PEFT's add_weighted_adapter."""

from __future__ import annotations

import json

import pytest
import torch
from adapterhub_merging import functions
from click.testing import CliRunner
from helpers.dense_delta_method import dense_method  # noqa: F401 (a fixture)

from adapterhub import AdapterPackage, MergeError
from adapterhub.cli import cli
from adapterhub.contracts.strategy import refactor, truncated_svd
from adapterhub.engines.merging import merge_adapters, replay

SHAPES = {"enc.a": (12, 8), "enc.b": (8, 12)}


def lora(seed: int, r: int, alpha: float, *, rslora: bool = False, modules=SHAPES,
         fingerprint: str | None = None) -> AdapterPackage:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for path, (d_out, d_in) in modules.items():
        tensors[f"{path}.lora_A"] = torch.randn(r, d_in, generator=gen)
        tensors[f"{path}.lora_B"] = torch.randn(d_out, r, generator=gen)
    return AdapterPackage.build("lora", {"r": r, "lora_alpha": alpha, "use_rslora": rslora},
                                tensors, base_fingerprint=fingerprint)


def delta(package: AdapterPackage, module: str, shape=None) -> torch.Tensor:
    method = package.method
    return method.delta_weight(module, method.group_tensors(package.tensors)[module],
                               package.config, shape or SHAPES[module])


@pytest.fixture(scope="module")
def inputs():
    # different ranks and scalings: s = 8/2 = 4 and s = 3/sqrt(3) (rsLoRA)
    return lora(1, 2, 8), lora(2, 3, 3, rslora=True)


# -- the combination functions, by hand ------------------------------------------------------

T = torch.tensor([[1.0, -2.0, 0.5, 0.0],
                  [-3.0, 1.0, 0.5, 0.0],
                  [1.0, 1.5, -2.0, 0.0]])
W = torch.tensor([1.0, 2.0, 0.5])


def test_magnitude_prune_by_hand():
    assert functions.magnitude_prune(T[1], 0.5).tolist() == [-3.0, 1.0, 0.0, 0.0]
    assert functions.magnitude_prune(T[2], 0.25).tolist() == [0.0, 0.0, -2.0, 0.0]
    assert functions.magnitude_prune(T[0], 0.1).tolist() == [0.0] * 4  # int(0.4) = 0 kept
    assert torch.equal(functions.magnitude_prune(T[0], 1.0), T[0])


def test_majority_sign_by_hand():
    # column sums -1, 0.5, -1, 0 → elected -, +, -, + (0 elects +); zeros never agree
    assert functions.majority_sign_mask(T, "total").tolist() == [
        [False, False, False, False], [True, True, False, False], [False, True, True, False]]
    # sign counts 1, 1, 1, 0 → +, +, +, +
    assert functions.majority_sign_mask(T, "frequency").tolist() == [
        [True, False, True, False], [False, True, True, False], [True, True, False, False]]


def test_ties_by_hand():
    # pruned (density 0.5): [1,-2,0,0], [-3,1,0,0], [0,1.5,-2,0]; sums -2, 0.5, -2, 0
    # agreeing weighted entries: col0 {-6}, col1 {2, 0.75}, col2 {-1}, col3 {}
    assert functions.ties(T, W, 0.5).tolist() == [-6.0, 1.375, -1.0, 0.0]
    assert functions.magnitude_prune_merge(T, W, 0.5).tolist() == [-5.0, 0.75, -1.0, 0.0]
    assert functions.task_arithmetic(T, W).tolist() == [-4.5, 0.75, 0.5, 0.0]
    assert functions.disjoint_merge(T, torch.ones_like(T, dtype=torch.bool)).tolist() == \
        pytest.approx([-1 / 3, 0.5 / 3, -1 / 3, 0.0])


def test_dare_by_hand():
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    keeps = [torch.rand(4, generator=torch.Generator().manual_seed(i)) < 0.5 for i in range(3)]
    got = functions.dare_linear(T, W, 0.5, gens)
    expected = sum(W[i] * T[i] * keeps[i] / 0.5 for i in range(3))
    assert torch.equal(got, expected)
    pruned = torch.stack([T[i] * keeps[i] / 0.5 for i in range(3)])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    assert torch.equal(functions.dare_ties(T, W, 0.5, gens),
                       functions.disjoint_merge(pruned * W[:, None],
                                                functions.majority_sign_mask(pruned)))


def test_functions_match_peft_merge_utils():
    from peft.utils import merge_utils

    gen = torch.Generator().manual_seed(0)
    stack = torch.randn(3, 6, 5, generator=gen)
    weights = torch.tensor([1.0, -0.5, 2.0])
    as_list = list(stack)
    torch.testing.assert_close(functions.task_arithmetic(stack, weights),
                               merge_utils.task_arithmetic(as_list, weights))
    torch.testing.assert_close(functions.magnitude_prune_merge(stack, weights, 0.3),
                               merge_utils.magnitude_prune(as_list, weights, 0.3))
    for method in functions.SIGN_METHODS:
        torch.testing.assert_close(functions.ties(stack, weights, 0.3, method),
                                   merge_utils.ties(as_list, weights, 0.3, method))


# -- strategies on LoRA packages -----------------------------------------------------------


def best_rank(matrix: torch.Tensor, k: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k]


def test_cat_is_exactly_the_weighted_sum(inputs):
    one, two = inputs
    merged = merge_adapters([one, two], "cat", weights=[0.5, -1.0])
    config = merged.config
    assert (config.r, config.lora_alpha, config.use_rslora) == (5, 5, False)
    assert config.rank_pattern == config.alpha_pattern == {}
    for module in SHAPES:
        # each input's own scaling exactly once: s1 = 8/2, s2 = 3/sqrt(3)
        a1, b1 = one.tensors[f"{module}.lora_A"], one.tensors[f"{module}.lora_B"]
        a2, b2 = two.tensors[f"{module}.lora_A"], two.tensors[f"{module}.lora_B"]
        by_hand = 0.5 * 4.0 * (b1 @ a1) - 3 / 3 ** 0.5 * (b2 @ a2)
        torch.testing.assert_close(delta(merged, module), by_hand, atol=2e-5, rtol=1e-6)
        # A factors are the inputs' own, untouched
        assert torch.equal(merged.tensors[f"{module}.lora_A"], torch.cat([a1, a2]))


def test_cat_is_exact_in_float64():
    """With power-of-two weights and scalings the merged factors are exact rescalings of the
    inputs', so the merged ΔW equals the weighted sum to float64 rounding."""
    one, two = lora(3, 2, 8), lora(4, 4, 2)  # s = 4 and 0.5
    merged = merge_adapters([one, two], "cat", weights=[0.25, -2.0])
    for module in SHAPES:
        def product(package, scale):
            a = package.tensors[f"{module}.lora_A"].double()
            b = package.tensors[f"{module}.lora_B"].double()
            return scale * (b @ a)

        expected = product(one, 0.25 * 4) + product(two, -2.0 * 0.5)
        got = product(merged, 1.0)
        assert (got - expected).abs().max().item() < 1e-12


def test_linear_is_lossless_and_svd_truncates(inputs):
    one, two = inputs
    linear = merge_adapters([one, two], "linear", weights=[0.5, -1.0])
    svd = merge_adapters([one, two], "svd", weights=[0.5, -1.0])
    low = merge_adapters([one, two], "linear", weights=[0.5, -1.0], rank=1)
    assert (linear.config.r, svd.config.r, low.config.r) == (5, 3, 1)
    for module in SHAPES:
        exact = 0.5 * delta(one, module) - delta(two, module)
        torch.testing.assert_close(delta(linear, module), exact, atol=3e-5, rtol=1e-5)
        torch.testing.assert_close(delta(svd, module).double(), best_rank(exact, 3),
                                   atol=3e-5, rtol=1e-5)
        torch.testing.assert_close(delta(low, module).double(), best_rank(exact, 1),
                                   atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy, function", [
    ("ties", lambda s, w, d, gens: functions.ties(s, w, d)),
    ("magnitude_prune", lambda s, w, d, gens: functions.magnitude_prune_merge(s, w, d)),
    ("dare_linear", lambda s, w, d, gens: functions.dare_linear(s, w, d, gens)),
    ("dare_ties", lambda s, w, d, gens: functions.dare_ties(s, w, d, gens)),
])
def test_pruning_strategies_follow_their_formula(inputs, strategy, function):
    from adapterhub.contracts.strategy import ModuleMerge

    one, two = inputs
    weights = torch.tensor([0.7, 1.3])
    seeded = {"seed": 11} if strategy.startswith("dare") else {}
    full = merge_adapters([one, two], strategy, weights=weights.tolist(), density=0.4,
                          rank=8, **seeded)
    default = merge_adapters([one, two], strategy, weights=weights.tolist(), density=0.4,
                             **seeded)
    assert default.config.r == 3  # the largest input rank
    for module in SHAPES:
        stack = torch.stack([delta(one, module), delta(two, module)])
        job = ModuleMerge(module, SHAPES[module], [], None, 0.4, {}, 11)
        gens = [job.generator(i) for i in range(2)]
        expected = function(stack, weights, 0.4, gens)
        # at full rank (8) the SVD re-factoring loses nothing
        torch.testing.assert_close(delta(full, module), expected, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(delta(default, module).double(), best_rank(expected, 3),
                                   atol=5e-5, rtol=1e-5)


def test_deterministic_digest_lineage_and_replay(inputs):
    one, two = inputs
    first = merge_adapters([one, two], "dare_ties", weights=[1, 0.5], density=0.3, seed=7)
    again = merge_adapters([one, two], "dare_ties", weights=[1, 0.5], density=0.3, seed=7)
    other = merge_adapters([one, two], "dare_ties", weights=[1, 0.5], density=0.3, seed=8)
    assert first.digest == again.digest != other.digest
    assert first.manifest.parents == (one.digest, two.digest)
    assert first.manifest.recipe == {
        "strategy": "dare_ties", "weights": [1.0, 0.5], "seed": 7,
        "params": {"density": 0.3, "majority_sign_method": "total"}}
    assert replay([one, two], first.manifest.recipe).digest == first.digest
    for strategy in ("linear", "svd", "cat"):
        merged = merge_adapters([one, two], strategy, weights=[2, -1])
        assert replay([one, two], merged.manifest.recipe).digest == merged.digest
        assert merged.manifest.recipe["seed"] is None


def test_modules_only_some_inputs_adapt(inputs):
    one, _ = inputs
    partial = lora(3, 4, 4, modules={"enc.a": SHAPES["enc.a"]})
    merged = merge_adapters([one, partial], "cat")
    assert merged.config.r == 6 and merged.config.rank_pattern == {"enc.b": 2}
    assert merged.config.alpha_pattern == {"enc.b": 2}  # scaling 1 there too
    torch.testing.assert_close(delta(merged, "enc.b"), delta(one, "enc.b"), atol=1e-5,
                               rtol=1e-6)


def test_refusals(inputs):
    one, two = inputs
    with pytest.raises(MergeError, match="needs a density"):
        merge_adapters([one, two], "ties")
    with pytest.raises(MergeError, match="does not take a rank"):
        merge_adapters([one, two], "cat", rank=2)
    with pytest.raises(MergeError, match="takes no seed"):
        merge_adapters([one, two], "ties", density=0.5, seed=1)
    with pytest.raises(MergeError, match="no parameter 'alpha'"):
        merge_adapters([one, two], "svd", alpha=1)
    with pytest.raises(MergeError, match="majority_sign_method must be one of"):
        merge_adapters([one, two], "ties", density=0.5, majority_sign_method="mean")
    with pytest.raises(MergeError, match="2 weights given for 1 adapters"):
        merge_adapters([one], "linear", weights=[1, 2])
    a, b = lora(5, 2, 2, fingerprint="sha256:" + "a" * 64), \
        lora(6, 2, 2, fingerprint="sha256:" + "b" * 64)
    with pytest.raises(MergeError, match="different base models"):
        merge_adapters([a, b], "linear")
    wrong = lora(7, 2, 2, modules={"enc.a": (12, 9)})
    with pytest.raises(MergeError, match="disagree on the shape of enc.a"):
        merge_adapters([one, wrong], "linear")


def test_refactor_equals_dense_svd():
    gen = torch.Generator().manual_seed(3)
    left, right = torch.randn(20, 6, generator=gen), torch.randn(6, 15, generator=gen)
    for k in (1, 4, 6):
        l1, r1 = refactor(left, right, k)
        l2, r2 = truncated_svd(left @ right, k)
        torch.testing.assert_close(l1 @ r1, l2 @ r2, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(l1, l2, atol=1e-4, rtol=1e-3)  # same signs too
    l1, r1 = refactor(left, right, 9)  # never more than the factors' rank
    assert l1.shape == (20, 6) and r1.shape == (6, 15)
    torch.testing.assert_close(l1 @ r1, left @ right, atol=1e-4, rtol=1e-4)


# -- a method without a low-rank form ---------------------------------------------------------


def test_mixed_methods_go_through_dense_svd(inputs, dense_method):
    one, _ = inputs
    gen = torch.Generator().manual_seed(9)
    dense = AdapterPackage.build("dense_delta_test", {}, {
        f"{m}.delta": torch.randn(*shape, generator=gen) * 0.1 for m, shape in SHAPES.items()})
    with pytest.raises(MergeError, match="no low-rank form"):
        merge_adapters([one, dense], "cat")
    with pytest.raises(MergeError, match="no input adapter of enc.a has a rank"):
        merge_adapters([dense], "svd")
    merged = merge_adapters([one, dense], "svd", weights=[1.0, 2.0], rank=4)
    assert merged.manifest.method_name == "lora" and merged.config.r == 4
    for module in SHAPES:
        exact = delta(one, module) + 2.0 * dense.tensors[f"{module}.delta"]
        torch.testing.assert_close(delta(merged, module).double(), best_rank(exact, 4),
                                   atol=5e-5, rtol=1e-5)
    assert merge_adapters([one, dense], "linear", rank=8).config.r == 8  # full: exact


# -- parity with PEFT's add_weighted_adapter (where PEFT is right: lora_alpha == r) -----------


def test_matches_peft_add_weighted_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    from adapterhub.io.formats.peft import read_peft

    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, vocab_size=50))
    config = dict(r=4, lora_alpha=4, target_modules=["query", "value"],
                  init_lora_weights=False)
    peft_model = get_peft_model(model, LoraConfig(**config), adapter_name="one")
    peft_model.add_adapter("two", LoraConfig(**config))
    peft_model.save_pretrained(tmp_path, selected_adapters=["one", "two"])
    packages = [read_peft(tmp_path / "one"), read_peft(tmp_path / "two")]
    layer = peft_model.base_model.model.encoder.layer[0].attention.self.query
    module = "encoder.layer.0.attention.self.query"
    for combination, kwargs in (("cat", {}), ("svd", {}), ("ties_svd", {"density": 0.5})):
        name = f"merged_{combination}"
        peft_model.add_weighted_adapter(["one", "two"], [0.6, 1.5], name,
                                        combination_type=combination, **kwargs)
        ours = merge_adapters(packages, combination.removesuffix("_svd"), weights=[0.6, 1.5],
                              **kwargs)
        torch.testing.assert_close(delta(ours, module, (32, 32)),
                                   layer.get_delta_weight(name), atol=1e-4, rtol=1e-4)


def test_cli_merge_and_strategies(inputs, tmp_path):
    one, two = inputs
    one.save(tmp_path / "one")
    two.save(tmp_path / "two")
    runner = CliRunner()
    result = runner.invoke(cli, ["merge", str(tmp_path / "one"), str(tmp_path / "two"),
                                 "--strategy", "ties", "--density", "0.5", "--weights", "1,2",
                                 "--param", "majority_sign_method=frequency", "--out",
                                 str(tmp_path / "merged"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["parents"] == [one.digest, two.digest]
    assert info["recipe"]["params"] == {"density": 0.5, "majority_sign_method": "frequency"}
    saved = AdapterPackage.load(tmp_path / "merged")
    assert saved.digest == info["digest"] == replay([one, two], saved.manifest.recipe).digest
    bad = runner.invoke(cli, ["merge", str(tmp_path / "one"), "--strategy", "nope", "--out",
                              str(tmp_path / "x")])
    assert bad.exit_code == 1 and "unknown strategy 'nope'" in bad.output
    listed = json.loads(runner.invoke(cli, ["strategies", "--json"]).output)
    assert {s["name"] for s in listed} >= {"linear", "cat", "svd", "ties", "dare_linear",
                                           "dare_ties", "magnitude_prune"}
