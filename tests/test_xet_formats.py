"""Xet hashes, chunking, chunk compression and the xorb format against the reference.

Vectors in ``tests/xet_vectors`` are copied from huggingface/xet-core's own tests (each file
names its source); ``hf_xet`` (the real client, installed with huggingface_hub) is the
reference for whole-file hashes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hf_xet
import lz4.frame
import numpy as np
import pytest

from adapterhub.errors import FormatError, IntegrityError
from adapterhub.xet import compression
from adapterhub.xet.chunking import (MAX_CHUNK, MIN_CHUNK, Chunker, boundaries, chunk_bytes,
                                     hash_stream)
from adapterhub.xet.hashes import (chunk_hash, file_hash, hash_to_hex, hex_to_hash,
                                   verification_hash, xorb_hash)
from adapterhub.xet.xorb import build_xorb, parse_xorb, read_footer, xorb_footer

VECTORS = Path(__file__).parent / "xet_vectors"


def splitmix_bytes(n: int, seed: int) -> bytes:
    """xet-core's portable test data generator (SplitMix64, little-endian words)."""
    out, state, mask = bytearray(), seed, (1 << 64) - 1
    while len(out) < n:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out += (z ^ (z >> 31)).to_bytes(8, "little")
    return bytes(out[:n])


def test_hash_text_form_reverses_each_word() -> None:
    raw = bytes(range(32))
    text = hash_to_hex(raw)
    assert text.startswith("0706050403020100")
    assert hex_to_hash(text) == raw
    # xet-core data_hash.rs, test_hash_hex_string_endianness
    raw = bytes([22, 175, 58, 132, 4, 75, 131, 214, 190, 153, 138, 66, 226, 3, 153, 242, 204, 86,
                 80, 234, 249, 153, 80, 99, 159, 80, 65, 138, 236, 231, 149, 78])
    assert hash_to_hex(raw) == "d6834b04843aaf16f29903e2428a99be635099f9ea5056cc4e95e7ec8a41509f"
    with pytest.raises(FormatError):
        hex_to_hash("AB" * 32)


def test_merkle_vectors_from_xet_core() -> None:
    cases = json.loads((VECTORS / "merkle.json").read_text())["cases"]
    assert len(cases) == 18
    for case in cases:
        chunks = [(hex_to_hash(h), size) for h, size in case["chunks"]]
        assert hash_to_hex(xorb_hash(chunks)) == case["xorb_hash"]
        for salt, expected in case["file_hashes"]:
            assert hash_to_hex(file_hash(chunks, hex_to_hash(salt))) == expected


def trigger_data(pattern: list[int], n: int, padding: int) -> bytes:
    data = list(pattern) + [0] * padding
    while len(data) < n:
        data.extend(data[:min(n - len(data), len(data))])
    return bytes(data)


def test_chunk_boundaries_match_xet_core() -> None:
    v = json.loads((VECTORS / "chunking.json").read_text())
    for i in range(128):
        data = trigger_data(v["pattern"], 65536, i)
        assert data[11111] == v["sample_at_11111"][str(i)]
        assert boundaries(chunk_bytes(data)) == v["boundaries"][str(i)], f"padding {i}"
    assert boundaries(chunk_bytes(bytes([59]) * 1_000_000)) == v["const_1mb_59"]
    data = splitmix_bytes(1_000_000, 0)
    assert (data[0], data[127], data[111111]) == (175, 132, 118)
    assert boundaries(chunk_bytes(data)) == v["random_1mb_seed0"]


def test_chunking_does_not_depend_on_how_input_is_fed() -> None:
    data = splitmix_bytes(300_000, 1)
    expected = chunk_bytes(data)
    assert len(expected) > 2
    assert all(MIN_CHUNK <= len(c) <= MAX_CHUNK for c in expected[:-1])
    for step in (97, 4096, 70_000):
        chunker = Chunker()
        got = []
        for pos in range(0, len(data), step):
            got += chunker.update(data[pos:pos + step])
        got += chunker.finish()
        assert got == expected, step


@pytest.mark.parametrize("size", [0, 5, MIN_CHUNK - 1, 300_000, 2_500_000])
def test_file_hash_matches_hf_xet(tmp_path: Path, size: int) -> None:
    rng = np.random.default_rng(size)
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    if size > 1_000_000:  # repeated content exercises repeated chunk hashes
        data = data[:size // 2] * 2
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with path.open("rb") as f:
        ours, n = hash_stream(f)
    assert n == size
    assert hash_to_hex(ours) == hf_xet.hash_files([str(path)])[0].hash


def test_verification_hash_is_keyed_over_raw_hashes() -> None:
    hashes = [chunk_hash(b"a"), chunk_hash(b"b")]
    assert verification_hash(hashes) != verification_hash(hashes[::-1])
    assert verification_hash(hashes) != verification_hash(hashes[:1])


@pytest.mark.parametrize("data", [b"", b"x", b"abc" * 5000, bytes(131072), os.urandom(70000),
                                  np.linspace(0, 1, 20000, dtype=np.float32).tobytes()])
def test_lz4_and_bg4_decode_like_the_lz4_library(data: bytes) -> None:
    for kwargs in ({}, {"block_linked": False}, {"content_checksum": True, "store_size": True,
                                                 "block_size": lz4.frame.BLOCKSIZE_MAX64KB}):
        assert compression.decompress(compression.LZ4, lz4.frame.compress(data, **kwargs),
                                      len(data)) == data
        planes = lz4.frame.compress(compression.bg4_split(data), **kwargs)
        assert compression.decompress(compression.BG4_LZ4, planes, len(data)) == data


def test_decompression_refuses_bombs_and_garbage() -> None:
    bomb = lz4.frame.compress(bytes(1_000_000))
    with pytest.raises(FormatError, match="more than"):
        compression.decompress(compression.LZ4, bomb, 1000)
    good = lz4.frame.compress(os.urandom(5000) * 3)
    for bad in (good[:-9], good[:7], b"not lz4 at all", good[:12] + b"\xff" * 40):
        with pytest.raises(FormatError):
            compression.decompress(compression.LZ4, bad, 15000)
    with pytest.raises(FormatError, match="scheme"):
        compression.decompress(7, b"abc", 3)


def sample_chunks() -> list[bytes]:
    floats = np.random.default_rng(3).standard_normal(60_000).astype(np.float32).tobytes()
    return chunk_bytes(splitmix_bytes(200_000, 2) + floats + b"abc" * 30_000)


@pytest.mark.parametrize("footer", [True, False])
def test_xorb_round_trip_every_scheme(footer: bool) -> None:
    chunks = sample_chunks()
    schemes = [i % 3 for i in range(len(chunks))]
    data = build_xorb(chunks, schemes, footer=footer, nonce=b"\x01\x02\x03\x04")
    expected = xorb_hash((chunk_hash(c), len(c)) for c in chunks)
    info = parse_xorb(data, expected)
    assert info.hash == expected and info.num_chunks == len(chunks)
    assert info.chunk_sizes == tuple(len(c) for c in chunks)
    canonical = data[:info.data_size] + xorb_footer(info)
    assert parse_xorb(canonical, expected) == info
    assert read_footer(canonical) == info
    if not footer:
        with pytest.raises(FormatError):
            read_footer(data)


def test_xorb_refuses_every_kind_of_corruption() -> None:
    chunks = sample_chunks()
    good = build_xorb(chunks, [2] * len(chunks))
    info = parse_xorb(good)
    flipped = bytearray(good)
    flipped[info.chunk_ends[0] + 100] ^= 0x40  # inside chunk 1's payload
    with pytest.raises((FormatError, IntegrityError)):
        parse_xorb(bytes(flipped))
    with pytest.raises(IntegrityError, match="uploaded as"):
        parse_xorb(good, chunk_hash(b"another"))
    with pytest.raises(FormatError):
        parse_xorb(good[:info.data_size - 10])  # a truncated last chunk
    with pytest.raises(FormatError):
        parse_xorb(good[:-3])  # a truncated footer
    lying = bytearray(good)
    footer_hash = info.data_size + 8
    lying[footer_hash] ^= 1  # the footer states another xorb hash
    with pytest.raises(IntegrityError, match="footer states"):
        parse_xorb(bytes(lying))
    bad_header = bytearray(good)
    bad_header[4] = 9  # unknown compression scheme of chunk 0
    with pytest.raises(FormatError, match="scheme"):
        parse_xorb(bytes(bad_header))
    big = bytearray(good)
    big[5:8] = (MAX_CHUNK + 1).to_bytes(3, "little")
    with pytest.raises(FormatError, match="limit"):
        parse_xorb(bytes(big))
    with pytest.raises(FormatError):
        parse_xorb(b"")
