"""The Xet CAS service over the in-memory store: every check that guards the store, the
global-dedup answer, reconstruction, and the shard format's edges."""

from __future__ import annotations

import dataclasses
import os

import pytest

from adapterhub.errors import (AdapterNotFoundError, AuthenticationError, FormatError,
                               IntegrityError)
from adapterhub.xet.hashes import chunk_hash, hash_to_hex, is_global_dedup_eligible, keyed
from adapterhub.xet.pack import pack_file
from adapterhub.xet.service import XetLimits, XetService
from adapterhub.xet.shard import FileEntry, Term, build_shard, parse_shard
from adapterhub.xet.storage import MemoryXetStorage, XetStorage
from adapterhub.xet.tokens import Grant, HmacTokenSigner
from adapterhub.xet.xorb import build_xorb, parse_xorb, read_footer


@pytest.fixture
def service() -> XetService:
    return XetService(MemoryXetStorage(), XetLimits(read_window=150_000))


def upload(service: XetService, packed, scope: str = "team") -> None:
    for x in packed.xorbs:
        service.upload_xorb(x.hex, x.data, scope)
    service.upload_shard(packed.shard, scope)


def nothing_stored(storage: MemoryXetStorage) -> bool:
    return not storage.xorbs and not storage.shards and not storage.files


def test_memory_storage_satisfies_the_protocol() -> None:
    assert isinstance(MemoryXetStorage(), XetStorage)


def test_upload_then_reconstruct_across_xorbs_and_schemes(service: XetService) -> None:
    data = os.urandom(1_200_000) + bytes(400_000) + os.urandom(300_000)
    packed = pack_file(data, schemes=(0, 1, 2), max_xorb_bytes=700_000)
    assert len(packed.xorbs) >= 3
    upload(service, packed)
    entry = service.file_by_sha256(packed.sha256, "team")
    assert entry is not None and entry.size == len(data)
    assert service.file_by_hash(hash_to_hex(packed.entry.file_hash), "team") == entry
    assert b"".join(service.reconstruct(entry)) == data
    assert b"".join(service.read_by_sha256(packed.sha256, "team")) == data
    with pytest.raises(AdapterNotFoundError):
        service.read_by_sha256(packed.sha256, "other")
    for info, stored in service.storage.xorbs.values():  # stored with a canonical footer
        assert parse_xorb(stored, info.hash) == info
        assert read_footer(stored) == info


def test_scopes_do_not_see_each_other(service: XetService) -> None:
    packed = pack_file(os.urandom(100_000))
    upload(service, packed, "team")
    assert service.file_by_sha256(packed.sha256, "other") is None
    first_chunk = hash_to_hex(service.storage.xorb_info(packed.xorbs[0].hash).chunk_hashes[0])
    assert service.dedup_shard(first_chunk, "other") is None
    with pytest.raises(IntegrityError, match="not uploaded"):
        service.upload_shard(packed.shard, "other")  # it names team's xorbs
    upload(service, packed, "other")  # sending the bytes again proves possession
    assert service.file_by_sha256(packed.sha256, "other") is not None


def test_empty_file(service: XetService) -> None:
    packed = pack_file(b"")
    upload(service, packed)
    entry = service.file_by_sha256(packed.sha256, "team")
    assert entry is not None and entry.size == 0 and list(service.reconstruct(entry)) == []


def test_xorb_refusals_store_nothing() -> None:
    storage = MemoryXetStorage()
    service = XetService(storage, XetLimits(max_xorb_bytes=300_000))
    good = pack_file(os.urandom(200_000), schemes=(2,)).xorbs[0]
    flipped = bytearray(good.data)
    flipped[len(flipped) // 2] ^= 1
    other = pack_file(os.urandom(50_000)).xorbs[0]
    big = pack_file(os.urandom(400_000)).xorbs[0]
    cases = [(good.hex, bytes(flipped), (FormatError, IntegrityError)),
             (other.hex, good.data, IntegrityError),  # the bytes of another xorb
             (good.hex, good.data[:-1000], FormatError),  # truncated
             (big.hex, big.data, FormatError),  # over the size limit
             ("ab" * 32, b"", FormatError),
             ("not-a-hash", good.data, FormatError)]
    for name, body, error in cases:
        with pytest.raises(error):
            service.upload_xorb(name, body, "team")
    assert nothing_stored(storage)


def lies(packed, xorb_info) -> dict[str, bytes]:
    """Shards that each state one falsehood about a correctly uploaded file."""
    entry = packed.entry
    term = entry.terms[0]
    missing = pack_file(os.urandom(30_000)).xorbs[0].hash
    shards = {
        "missing xorb": [dataclasses.replace(entry, terms=(dataclasses.replace(
            term, xorb_hash=missing),) + entry.terms[1:])],
        "file hash": [dataclasses.replace(entry, file_hash=chunk_hash(b"lie"))],
        "sha256": [dataclasses.replace(entry, sha256="00" * 32)],
        "verification": [dataclasses.replace(entry, verification=(chunk_hash(b"x"),)
                                             + entry.verification[1:])],
        "no verification": [dataclasses.replace(entry, verification=None)],
        "chunk range": [dataclasses.replace(entry, terms=(dataclasses.replace(
            term, chunk_end=xorb_info.num_chunks + 1),) + entry.terms[1:])],
        "empty range": [dataclasses.replace(entry, terms=(dataclasses.replace(
            term, chunk_end=term.chunk_start),) + entry.terms[1:])],
        "byte count": [dataclasses.replace(entry, terms=(dataclasses.replace(
            term, unpacked_bytes=term.unpacked_bytes + 1),) + entry.terms[1:])],
    }
    out = {name: build_shard(files, [x.entry for x in packed.xorbs])
           for name, files in shards.items()}
    wrong_chunks = dataclasses.replace(packed.xorbs[0].entry,
                                       chunks=packed.xorbs[0].entry.chunks[:-1])
    out["xorb section"] = build_shard([entry], [wrong_chunks])
    out["keyed upload"] = build_shard([entry], [], footer=True, hmac_key=b"k" * 32)
    out["truncated"] = packed.shard[:-20]
    out["garbage"] = b"HFRepo" + os.urandom(100)
    return out


def test_shard_refusals_store_nothing() -> None:
    storage = MemoryXetStorage()
    service = XetService(storage)
    packed = pack_file(os.urandom(300_000))
    for x in packed.xorbs:
        service.upload_xorb(x.hex, x.data, "team")
    info = storage.xorb_info(packed.xorbs[0].hash)
    reasons = {"missing xorb": "not uploaded", "file hash": "file hash", "sha256": "sha256",
               "verification": "verification hash", "no verification": "verification entry",
               "chunk range": "are not in xorb", "empty range": "are not in xorb",
               "byte count": "chunks hold", "xorb section": "not the stored xorb",
               "keyed upload": "keyed", "truncated": "truncated", "garbage": "header tag"}
    shards = lies(packed, info)
    assert set(shards) == set(reasons)
    for name, shard in shards.items():
        with pytest.raises((FormatError, IntegrityError), match=reasons[name]):
            service.upload_shard(shard, "team")
        assert not storage.shards and not storage.files, name
    service.upload_shard(packed.shard, "team")  # the truth is accepted
    assert len(storage.files) == 1


def test_shard_over_the_size_limit_is_refused() -> None:
    service = XetService(MemoryXetStorage(), XetLimits(max_shard_bytes=200))
    with pytest.raises(FormatError, match="at most"):
        service.upload_shard(pack_file(os.urandom(300_000)).shard, "team")


def test_dedup_answer_hides_chunk_hashes_behind_a_key(service: XetService) -> None:
    packed = pack_file(os.urandom(500_000))
    upload(service, packed)
    info = service.storage.xorb_info(packed.xorbs[0].hash)
    answer = service.dedup_shard(hash_to_hex(info.chunk_hashes[0]), "team")
    assert answer is not None
    shard = parse_shard(answer)  # a full shard: lookup tables and footer check out
    assert shard.hmac_key != bytes(32) and shard.key_expiry > shard.created > 0
    (xorb,) = shard.xorbs
    assert xorb.xorb_hash == info.hash
    assert [c.chunk_hash for c in xorb.chunks] == [keyed(h, shard.hmac_key)
                                                   for h in info.chunk_hashes]
    assert not set(info.chunk_hashes) & {c.chunk_hash for c in xorb.chunks}
    assert service.dedup_shard(hash_to_hex(info.chunk_hashes[1]), "team") is None  # not indexed
    assert service.dedup_shard(hash_to_hex(chunk_hash(b"unknown")), "team") is None


def eligible_chunk() -> bytes:
    for i in range(1_000_000):
        data = b"eligible %d" % i
        if is_global_dedup_eligible(chunk_hash(data)):
            return data
    raise AssertionError("no eligible chunk found")


def test_globally_eligible_chunks_are_indexed_with_their_xorb(service: XetService) -> None:
    chunk = eligible_chunk()
    blob = build_xorb([os.urandom(20_000), chunk])
    info = parse_xorb(blob)
    service.upload_xorb(info.hex, blob, "team")
    answer = service.dedup_shard(hash_to_hex(chunk_hash(chunk)), "team")
    assert answer is not None and parse_shard(answer).xorbs[0].xorb_hash == info.hash


def test_reconstruct_detects_a_corrupt_store(service: XetService) -> None:
    packed = pack_file(os.urandom(200_000))
    upload(service, packed)
    info, stored = service.storage.xorbs[packed.xorbs[0].hash]
    damaged = bytearray(stored)
    damaged[info.chunk_ends[0] + 50] ^= 1
    service.storage.xorbs[info.hash] = (info, bytes(damaged))
    entry = service.file_by_sha256(packed.sha256, "team")
    with pytest.raises(IntegrityError, match="corrupt"):
        b"".join(service.reconstruct(entry))


def test_shard_format_round_trip_and_refusals() -> None:
    packed = pack_file(os.urandom(150_000))
    shard = parse_shard(packed.shard)
    assert build_shard(shard.files, shard.xorbs) == packed.shard
    full = build_shard(shard.files, shard.xorbs, footer=True, created=1, key_expiry=2)
    assert parse_shard(full).files == shard.files
    bad_footer = bytearray(full)
    bad_footer[-8] ^= 1  # footer_offset
    unknown_flag = FileEntry(packed.entry.file_hash, (Term(bytes(32), 1, 0, 1),))
    flagged = bytearray(build_shard([unknown_flag]))
    flagged[48 + 32] = 1  # a file flag nobody defined
    for bad in (bytes(bad_footer), bytes(flagged), packed.shard[:47], b"x" * 100,
                packed.shard + b"extra"):
        with pytest.raises(FormatError):
            parse_shard(bad)


def test_cas_tokens_are_signed_and_expire() -> None:
    clock = [1000.0]
    signer = HmacTokenSigner(b"s" * 32, now=lambda: clock[0])
    grant = Grant("alice", "team/up", "team", True, 2000)
    token = signer.issue(grant)
    assert signer.verify(token) == grant
    forged = HmacTokenSigner(b"t" * 32).issue(dataclasses.replace(grant, scope="other"))
    for bad in (forged, token[:-2] + "xx", "Bearer", token.replace(".", "", 1)):
        with pytest.raises(AuthenticationError):
            signer.verify(bad)
    clock[0] = 2001.0
    with pytest.raises(AuthenticationError, match="expired"):
        signer.verify(token)
