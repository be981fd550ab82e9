"""MELoRA: parameter count, batched forward vs a per-block loop, backward, block-diagonal merge."""

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import adapterhub
from adapterhub.cli import cli


def attached_linear(d_in, d_out, *, r, n, alpha=4.0, dtype=torch.float32, random_b=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, d_out, dtype=dtype))
    layers = adapterhub.attach(model, "melora", r=r, n=n, lora_alpha=alpha,
                               target_modules=["0"], init_lora_weights=not random_b)
    return model, layers["0"]


def loop_reference(layer, x):
    """The official implementation's per-block loop: slice, mini LoRA, scale, concatenate."""
    n = layer.n
    chunks = x.chunk(n, dim=-1)
    outs = [F.linear(F.linear(chunks[i], layer.melora_A[i]), layer.melora_B[i]) * layer.scaling
            for i in range(n)]
    return layer.base_layer(x) + torch.cat(outs, dim=-1)


@pytest.mark.parametrize("d_in,d_out,r,n", [(64, 32, 1, 8), (64, 32, 3, 4), (48, 96, 2, 1),
                                            (12, 12, 5, 3)])
def test_parameter_count_is_r_times_d_in_plus_d_out(d_in, d_out, r, n):
    _, layer = attached_linear(d_in, d_out, r=r, n=n)
    assert layer.melora_A.shape == (n, r, d_in // n)
    assert layer.melora_B.shape == (n, d_out // n, r)
    assert sum(p.numel() for p in layer.adapter_parameters()) == r * (d_in + d_out)


@pytest.mark.parametrize("shape", [(6, 32), (2, 3, 32), (2, 2, 2, 32)])
def test_batched_forward_equals_per_block_loop(shape):
    _, layer = attached_linear(32, 16, r=3, n=4)
    x = torch.randn(*shape)
    torch.testing.assert_close(layer(x), loop_reference(layer, x), atol=1e-6, rtol=1e-6)


def test_backward_passes_gradcheck_in_float64():
    _, layer = attached_linear(8, 12, r=2, n=4, dtype=torch.float64)
    params = (layer.melora_A.detach().clone().requires_grad_(),
              layer.melora_B.detach().clone().requires_grad_())
    x = torch.randn(3, 2, 8, dtype=torch.float64, requires_grad=True)

    def forward(x, a, b):
        return torch.func.functional_call(layer, {"melora_A": a, "melora_B": b}, (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))


def test_merge_is_block_diagonal_with_exact_zero_off_diagonal_blocks():
    _, layer = attached_linear(64, 32, r=2, n=4, alpha=6.0)
    delta = layer.delta_weight()
    assert delta.shape == (32, 64) and delta.dtype == torch.float32
    blocks = delta.reshape(4, 8, 4, 16)
    for i in range(4):
        for j in range(4):
            if i == j:
                expected = layer.melora_B[i] @ layer.melora_A[i] * (6.0 / 2)
                torch.testing.assert_close(blocks[i, :, j, :], expected.detach())
            else:
                assert torch.count_nonzero(blocks[i, :, j, :]) == 0
    assert torch.linalg.matrix_rank(delta) == 4 * 2  # equivalent rank n·r


def test_merged_forward_equals_unmerged_forward():
    model, layer = attached_linear(64, 32, r=2, n=4)
    x = torch.randn(5, 64)
    unmerged = model(x)
    torch.testing.assert_close(unmerged, loop_reference(layer, x), atol=1e-5, rtol=1e-5)
    layer.merge()
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=1e-5)
    plain = adapterhub.unload(model, merge=False)
    assert isinstance(plain[0], nn.Linear)


def test_one_block_is_plain_lora():
    _, layer = attached_linear(16, 24, r=3, n=1, alpha=6.0)
    a, b = layer.melora_A[0].detach(), layer.melora_B[0].detach()
    lora = adapterhub.get_method("lora")
    expected = lora.delta_weight("0", {"lora_A": a, "lora_B": b},
                                 lora.make_config(r=3, lora_alpha=6.0), (24, 16))
    torch.testing.assert_close(layer.delta_weight(), expected)


@pytest.mark.parametrize("d_in,d_out", [(10, 12), (12, 10)])
def test_non_divisible_dims_rejected_before_anything_changes(d_in, d_out):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(d_in, d_out))
    with pytest.raises(adapterhub.TargetError, match=r"not both divisible by 4") as info:
        adapterhub.attach(model, "melora", n=4, target_modules=["0", "1"])
    assert "2" in info.value.hint  # suggests an n that divides both
    assert all(isinstance(m, nn.Linear) for m in model)  # the first target was not replaced
    assert all(p.requires_grad for p in model.parameters())


def test_stored_tensors_checked_against_config():
    method = adapterhub.get_method("melora")
    config = method.make_config(r=2, n=4)
    good = {"melora_A": torch.zeros(4, 2, 4), "melora_B": torch.zeros(4, 3, 2)}
    assert method.infer_base_shape("m", good, config) == (12, 16)
    with pytest.raises(adapterhub.FormatError):
        method.delta_weight("m", good, config, (16, 12))
    with pytest.raises(adapterhub.FormatError):
        method.delta_weight("m", {**good, "melora_A": torch.zeros(4, 3, 4)}, config, (12, 16))


def test_export_to_peft_refused_with_a_clear_message(tmp_path):
    model, _ = attached_linear(16, 16, r=2, n=4)
    adapterhub.extract(model).save(tmp_path / "pkg")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "pkg"), "--format", "peft",
                                      "--out", str(tmp_path / "peft")])
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.startswith("Error: PEFT cannot express a MELoRA adapter")
    assert "adapterhub apply" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "peft").exists()
