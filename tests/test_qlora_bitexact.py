"""NF4/FP4 are bit-exact with bitsandbytes' CPU implementation (the test-only reference).

Packed bytes come from bitsandbytes' generic ``quantize_4bit`` path (not the CPU-repacked
inference layout); the nested absmax from its CPU 8-bit kernel; dequantized values are
compared with bitsandbytes' CPU kernel where that kernel honours the flat block layout, and
with its generic (default-backend) kernel everywhere.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from bitsandbytes import functional as bnb_functional

import adapterhub

SHAPES = [(1,), (7,), (63,), (64,), (65,), (3, 5), (33, 17), (130, 70), (127, 129), (64, 64),
          (300, 257), (4097,), (64 * 256 + 1, 1), (1000, 70), (96, 128)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True, scope="module")
def _eager_reference():
    # bitsandbytes wraps its generic kernels in torch.compile; the eager code is the same
    # arithmetic and spares each shape a compilation.
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


def _bnb(weight, kind, blocksize, double_quant):
    return bnb_functional.quantize_4bit(weight, blocksize=blocksize, quant_type=kind,
                                        compress_statistics=double_quant)


def _generic_dequant(packed, state, kind):
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    absmax = state.absmax
    if state.nested:
        absmax = bnb_functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
    compute = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)
    return compute(packed.view(-1), absmax, bnb_functional.get_4bit_type(kind, "cpu"),
                   state.blocksize, tuple(state.shape), state.dtype)


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantize_and_dequantize_match_bitsandbytes(kind, dtype):
    quantizer = adapterhub.get_quantizer(kind)
    generator = torch.Generator().manual_seed(0)
    for shape, blocksize, double_quant in itertools.product(SHAPES, (64, 128, 32),
                                                            (True, False)):
        if blocksize == 32 and shape[0] > 200:
            continue
        what = f"{kind} {dtype} {shape} blocksize={blocksize} double_quant={double_quant}"
        weight = (torch.randn(shape, generator=generator) * 0.05).to(dtype)
        packed, state = _bnb(weight, kind, blocksize, double_quant)
        ours = quantizer.quantize(weight, quantizer.make_config(blocksize=blocksize,
                                                                double_quant=double_quant))
        assert torch.equal(ours.data, packed), what
        assert torch.equal(ours.state["absmax"], state.absmax), what
        if double_quant:
            assert torch.equal(ours.state["nested_absmax"], state.state2.absmax), what
            assert torch.equal(ours.state["nested_offset"], state.offset), what
            assert torch.equal(ours.state["nested_quant_map"], state.state2.code), what
        values = quantizer.dequantize(ours)
        assert values.dtype == dtype and tuple(values.shape) == shape
        assert torch.equal(values, _generic_dequant(packed, state, kind)), what
        # bitsandbytes' CPU kernel assumes blocks do not straddle rows; compare where it holds
        if len(shape) == 1 or shape[-1] % 2 or shape[-1] % blocksize == 0:
            reference = bnb_functional.dequantize_4bit(packed, state)
            assert torch.equal(values, reference.reshape(shape)), what


@pytest.mark.parametrize("chunk", [192, 4096])
def test_chunk_boundaries_match_bitsandbytes(monkeypatch, chunk):
    """Large weights are processed in chunks of blocks; shrink the chunk to cross many."""
    from adapterhub_qlora import kernels

    monkeypatch.setattr(kernels, "CHUNK", chunk)
    monkeypatch.setattr(kernels, "DEQUANT_CHUNK", chunk)
    quantizer = adapterhub.get_quantizer("nf4")
    generator = torch.Generator().manual_seed(1)
    for shape, blocksize in [((301, 97), 64), ((64, 200), 128), ((5000,), 32), ((63, 64), 64)]:
        weight = (torch.randn(shape, generator=generator) * 0.05).to(torch.bfloat16)
        packed, state = _bnb(weight, "nf4", blocksize, True)
        ours = quantizer.quantize(weight, quantizer.make_config(blocksize=blocksize))
        assert torch.equal(ours.data, packed) and torch.equal(ours.state["absmax"], state.absmax)
        assert torch.equal(quantizer.dequantize(ours), _generic_dequant(packed, state, "nf4"))


def test_worked_vector():
    """methods.md §5: block [0.5, -1.0, 0.08, 2.0, 0 x 60]."""
    quantizer = adapterhub.get_quantizer("nf4")
    weight = torch.tensor([0.5, -1.0, 0.08, 2.0] + [0.0] * 60)
    q = quantizer.quantize(weight, quantizer.make_config(double_quant=False))
    assert q.state["absmax"].tolist() == [2.0]
    packed = q.data.view(-1).tolist()
    assert packed[:3] == [0xA2, 0x8F, 0x77] and packed[3:] == [0x77] * 29
    values = quantizer.dequantize(q)
    expected = torch.tensor([0.4922246, -1.0501461, 0.1591606, 2.0])
    torch.testing.assert_close(values[:4], expected, atol=1e-7, rtol=0)
    assert not values[4:].any()


def test_code_books_match():
    from adapterhub_qlora.codes import code4, dynamic_map

    assert torch.equal(code4("nf4"), bnb_functional.get_4bit_type("nf4", "cpu"))
    assert torch.equal(code4("fp4"), bnb_functional.get_4bit_type("fp4", "cpu"))
    assert torch.equal(dynamic_map(), bnb_functional.create_dynamic_map())


@pytest.mark.parametrize("weight", [torch.zeros(200, 64), torch.full((70,), 0.5),
                                    torch.zeros(3, 5)], ids=["zeros", "constant", "small"])
def test_degenerate_weights_match(weight):
    """All-zero blocks, a constant weight (every absmax equal: nested values all zero)."""
    quantizer = adapterhub.get_quantizer("nf4")
    packed, state = _bnb(weight, "nf4", 64, True)
    ours = quantizer.quantize(weight, quantizer.make_config())
    reference = {"w": packed, **{f"w.{k}": v for k, v in state.as_dict(packed=True).items()}}
    mine = quantizer.state_dict(ours, "w")
    assert sorted(mine) == sorted(reference)
    for key in reference:
        assert torch.equal(mine[key], reference[key]), key
    assert torch.equal(quantizer.dequantize(ours), _generic_dequant(packed, state, "nf4"))


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_serialization_is_bitsandbytes_as_dict(kind, double_quant):
    """Our checkpoint tensors equal QuantState.as_dict(packed=True), byte for byte, and
    bitsandbytes' QuantState.from_dict reads ours back to the same values."""
    quantizer = adapterhub.get_quantizer(kind)
    weight = (torch.randn(96, 200, generator=torch.Generator().manual_seed(3)) * 0.02
              ).to(torch.bfloat16)
    packed, state = _bnb(weight, kind, 64, double_quant)
    ours = quantizer.quantize(weight, quantizer.make_config(double_quant=double_quant))
    stored = quantizer.state_dict(ours, "layer.weight")
    reference = {f"layer.weight.{k}": v for k, v in state.as_dict(packed=True).items()}
    reference["layer.weight"] = packed
    assert sorted(stored) == sorted(reference)
    for key, value in reference.items():
        assert stored[key].dtype == value.dtype and torch.equal(stored[key], value), key

    loaded = bnb_functional.QuantState.from_dict(
        {k.removeprefix("layer.weight."): v for k, v in stored.items() if k != "layer.weight"},
        device=torch.device("cpu"))
    assert loaded == state
    assert torch.equal(_generic_dequant(stored["layer.weight"], loaded, kind),
                       quantizer.dequantize(ours))

    # and the other way: bitsandbytes' serialization read by us
    back = quantizer.from_state_dict("layer.weight", reference)
    assert back.shape == (96, 200) and back.dtype == torch.bfloat16
    assert back.config.double_quant == double_quant
    assert torch.equal(quantizer.dequantize(back), quantizer.dequantize(ours))


def test_bits_per_param_from_stored_bytes():
    quantizer = adapterhub.get_quantizer("nf4")
    weight = torch.randn(4096, 4096, dtype=torch.bfloat16)
    config = quantizer.make_config()
    stored = quantizer.state_dict(quantizer.quantize(weight, config), "w")
    nbytes = sum(t.numel() * t.element_size() for t in stored.values())
    n = weight.numel()
    json_bytes = stored["w.quant_state.bitsandbytes__nf4"].numel()
    # packed codes, 8-bit absmax, fp32 nested absmax, the two code books, the JSON
    assert nbytes == n // 2 + n // 64 + 4 * n // (64 * 256) + 4 * 16 + 4 * 256 + json_bytes
    assert quantizer.bits_per_param(config) == pytest.approx(4.127, abs=5e-4)
    assert 8 * nbytes / n == pytest.approx(4.127, abs=1e-3)
    plain = quantizer.make_config(double_quant=False)
    stored = quantizer.state_dict(quantizer.quantize(weight, plain), "w")
    nbytes = sum(t.numel() * t.element_size() for t in stored.values())
    assert 8 * nbytes / n == pytest.approx(4.5, abs=1e-3)


def test_quant_storage_other_than_uint8_is_read():
    """transformers may store the packed bytes as bf16 (``bnb_4bit_quant_storage``)."""
    quantizer = adapterhub.get_quantizer("nf4")
    weight = torch.randn(64, 96, dtype=torch.bfloat16)
    packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, quant_type="nf4",
                                                 compress_statistics=True,
                                                 quant_storage=torch.bfloat16)
    assert packed.dtype == torch.bfloat16
    tensors = {"w": packed, **{f"w.{k}": v for k, v in state.as_dict(packed=True).items()}}
    q = quantizer.from_state_dict("w", tensors)
    assert q.data.dtype == torch.uint8 and q.data.shape == (64 * 96 // 2, 1)
    assert torch.equal(quantizer.dequantize(q), _generic_dequant(packed.view(torch.uint8),
                                                                 state, "nf4"))
