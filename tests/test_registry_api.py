"""The Python API (adapterhub.registry.Registry) with real adapters, on SQLite and PostgreSQL."""

import json

import pytest
import torch
from helpers.registry_helpers import LOCAL
from sqlalchemy import select, update

from adapterhub.errors import (AdapterNotFoundError, ConfigError, FormatError, IntegrityError,
                               MissingBlobsError, PromotionError, RefError, UnknownRemoteError,
                               UnsafeFormatError)
from adapterhub.io.formats.peft import write_peft
from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry
from adapterhub.registry.ci import ci_labels
from adapterhub.registry.sources import (NativeDirSource, PackageSource, RegistrySource,
                                         resolve_source)
from registry_db.models import Blob, Chunk

CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["lin0", "lin1"]}


def lora(seed=0, dtype=torch.bfloat16, **fields):
    g = torch.Generator().manual_seed(seed)
    tensors = {"lin0.lora_A": torch.randn(4, 16, generator=g),
               "lin0.lora_B": torch.randn(32, 4, generator=g),
               "lin1.lora_A": torch.randn(4, 32, generator=g),
               "lin1.lora_B": torch.zeros(16, 4)}
    return AdapterPackage.build("lora", CONFIG, {k: v.to(dtype) for k, v in tensors.items()},
                                base_name="tiny", **fields)


def same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def reg(registry_url):
    with Registry(registry_url) as registry:
        yield registry


@pytest.fixture
def local(tmp_path):
    with Registry(tmp_path / "local.db") as registry:
        yield registry


def test_push_native_dir_then_get_bit_exact(reg, tmp_path):
    package = lora(metrics={"acc": 0.9})
    package.save(tmp_path / "a")
    result = reg.push(tmp_path / "a", "team/bot", message="first", tags=["dev"],
                      labels={"dataset": "v1"}, author="ann")
    version = result.version
    assert result.created and version.ref == "team/bot@1" and version.author == "ann"
    assert version.labels == {"dataset": "v1"} and version.tags == ("dev",)
    got = reg.get("team/bot:dev")
    assert same_tensors(got.tensors, package.tensors)
    assert got.manifest.labels == {"dataset": "v1"} and got.digest == version.digest
    assert reg.push(tmp_path / "a", "team/bot", labels={"dataset": "v1"}).created is False


def test_push_peft_dir_package_and_ref(reg, tmp_path):
    package = lora(1)
    write_peft(package, tmp_path / "peft")
    from_peft = reg.push(tmp_path / "peft", "team/peft").version
    assert same_tensors(reg.get(from_peft.ref).tensors, package.tensors)
    from_object = reg.push(package, "team/object").version
    assert from_object.digest == package.digest
    copy = reg.push("team/object@1", "team/copy")
    assert copy.version.digest == package.digest
    assert reg.usage().blobs == 4  # three pushes of the same tensors store them once


def test_resolve_source_kinds(reg, tmp_path):
    lora().save(tmp_path / "a")
    write_peft(lora(), tmp_path / "p")
    reg.push(tmp_path / "a", "team/bot")
    assert isinstance(resolve_source(tmp_path / "a"), NativeDirSource)
    assert isinstance(resolve_source(tmp_path / "p"), PackageSource)
    source = resolve_source("team/bot@1", registry=reg)
    assert isinstance(source, RegistrySource) and source.version.number == 1
    assert same_tensors(source.package().tensors, lora().tensors)
    with pytest.raises(AdapterNotFoundError, match="no such directory, and no repository"):
        resolve_source("team/missing", registry=reg)
    with pytest.raises(AdapterNotFoundError, match="neither an adapter directory nor"):
        resolve_source("not a ref", registry=reg)


def test_corrupt_source_dir_is_refused_and_nothing_is_written(reg, tmp_path):
    lora().save(tmp_path / "a")
    weights = tmp_path / "a" / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"push team/bot: tensor 'lin1.lora_B': bytes sent "
                                             r"for blob sha256:[0-9a-f]{64} hash to sha256:"):
        reg.push(tmp_path / "a", "team/bot")
    assert reg.list() == [] and reg.usage().versions == 0


def test_hostile_inputs_write_nothing(reg, tmp_path):
    lora().save(tmp_path / "a")
    for name in ["team/../etc", "team/bot/x", "Team/Bot", "t/" + "x" * 300, "../x", "team"]:
        with pytest.raises(RefError):
            reg.push(tmp_path / "a", name)
    for tag in ["3", "v3", "latest", "sha256abc", "Prod"]:
        with pytest.raises(RefError):
            reg.push(tmp_path / "a", "team/bot", tags=[tag])
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeFormatError, match="pickle"):
        reg.push(pickled, "team/bot")
    header_lies = tmp_path / "lies"
    lora().save(header_lies)
    manifest = json.loads((header_lies / "adapter.json").read_text())
    manifest["tensors"]["lin0.lora_A"]["dtype"] = "F16"
    (header_lies / "adapter.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="adapter.json says F16"):
        reg.push(header_lies, "team/bot")
    usage = reg.usage()
    assert (usage.repositories, usage.versions, usage.blobs) == (0, 0, 0)


def test_commit_naming_a_missing_blob_via_a_remote(reg):
    from adapterhub.registry.remotes import DatabaseRemote

    remote = DatabaseRemote(reg.url, service=reg.service)
    with pytest.raises(MissingBlobsError) as err:
        remote.commit("team/bot", lora().manifest)
    assert len(err.value.digests) == 4 and reg.usage().versions == 0


def test_pull_between_backends_copies_lineage_and_verifies(reg, local, tmp_path):
    base = reg.push(lora(0), "team/base").version
    child = reg.push(lora(1, parents=(base.digest,)), "team/child", tags=["prod"]).version
    pulled = local.pull("team/child:prod", source=reg.url, out=tmp_path / "out", format="peft")
    assert pulled.digest == child.digest and pulled.ref == "team/child@1"
    assert pulled.tags == ()  # tags are per registry; only --tag moves them
    assert local.resolve("team/base@1").digest == base.digest  # the parent came along
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert local.verify().ok
    events = [e.action for e in local.events()]
    assert "pull" in events
    again = local.pull("team/child@1", source=reg.url)  # nothing new
    assert again.number == 1 and local.usage().versions == 2


def test_push_to_a_named_remote_sends_missing_parents(local, reg, tmp_path):
    base = local.push(lora(0), "team/base").version
    local.push(lora(1, parents=(base.digest,)), "team/child")
    local.add_remote("origin", reg.url)
    result = local.push("team/child@1", "team/child", to="origin", tags=["prod"])
    assert result.created and result.version.tags == ("prod",)
    assert reg.resolve("team/base").digest == base.digest
    with pytest.raises(IntegrityError, match="names parent version"):
        local.push(lora(2, parents=("sha256:" + "0" * 64,)), "team/orphan")


def test_pull_from_a_corrupt_source_names_blob_and_version(reg, local):
    version = reg.push(lora(0), "team/bot").version
    victim = version.manifest.tensors["lin0.lora_B"].digest
    with reg.service.db.write() as s:
        blob_id = s.scalar(select(Blob.id).where(Blob.digest == victim))
        data = bytearray(s.scalar(select(Chunk.data).where(Chunk.blob_id == blob_id)))
        data[len(data) // 2] ^= 0x10
        s.execute(update(Chunk).where(Chunk.blob_id == blob_id).values(data=bytes(data)))
    with pytest.raises(IntegrityError) as err:
        local.pull("team/bot@1", source=reg.url)
    assert victim in str(err.value) and "team/bot@1" in str(err.value)
    assert local.usage().versions == 0
    report = reg.verify()
    assert [p.blob for p in report.problems] == [victim]


def test_remote_lookup_errors(local):
    with pytest.raises(AdapterNotFoundError, match="no remote named 'origin'"):
        local.pull("team/bot", source="origin")
    with pytest.raises(UnknownRemoteError, match="unknown remote 'ftp'"):
        local.add_remote("bad", "ftp://example.org/x")
    assert local.remotes() == []


def test_diff_reports_settings_and_tensor_norms(reg):
    a = lora(0, labels={"run": "1"})
    changed = dict(a.tensors)
    changed["lin0.lora_A"] = a.tensors["lin0.lora_A"] + 1
    b = AdapterPackage.build("lora", {**CONFIG, "lora_alpha": 16}, changed, base_name="tiny")
    reg.push(a, "team/bot")
    reg.push(b, "team/bot")
    result = reg.diff("team/bot@1", "team/bot@2")
    assert result["settings"]["method.config.lora_alpha"] == [8, 16]
    assert result["settings"]["labels.run"] == ["1", None]
    rows = {t["name"]: t for t in result["tensors"]}
    assert rows["lin0.lora_B"]["status"] == "same"
    delta = (changed["lin0.lora_A"].float() - a.tensors["lin0.lora_A"].float()).norm()
    assert rows["lin0.lora_A"]["status"] == "changed"
    assert rows["lin0.lora_A"]["change_norm"] == pytest.approx(float(delta))
    assert result["changed_tensors"] == 1


def test_promote_is_gated_on_metrics(reg):
    reg.push(lora(0, metrics={"eval": {"accuracy": 0.91}, "loss": 0.3}), "team/bot",
             tags=["prod"])
    reg.push(lora(1, metrics={"eval": {"accuracy": 0.85}, "loss": 0.2}), "team/bot")
    with pytest.raises(PromotionError, match=r"eval.accuracy=0.85, which fails "
                                             r"eval.accuracy>=0.9; tag 'prod' stays on team/bot@1"):
        reg.promote("team/bot@2", "prod", ["loss<0.25", "eval.accuracy>=0.9"])
    assert reg.resolve("team/bot:prod").number == 1
    with pytest.raises(PromotionError, match="metric 'f1' is missing"):
        reg.promote("team/bot@2", "prod", ["f1>0.5"])
    with pytest.raises(ConfigError, match="invalid condition"):
        reg.promote("team/bot@2", "prod", ["accuracy => 0.9"])
    assert reg.promote("team/bot@2", "prod", ["loss<=0.2", "eval.accuracy>0.8"]).number == 2
    assert reg.resolve("team/bot:prod").number == 2
    assert reg.events()[0].action == "promote"


def test_ci_labels_from_github_and_gitlab():
    github = {"GITHUB_SHA": "abc123", "GITHUB_REF_NAME": "main",
              "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "org/repo",
              "GITHUB_RUN_ID": "42"}
    assert ci_labels(github) == {"ci.provider": "github", "git.sha": "abc123",
                                 "git.branch": "main",
                                 "ci.run_url": "https://github.com/org/repo/actions/runs/42"}
    gitlab = {"CI_COMMIT_SHA": "def456", "CI_COMMIT_REF_NAME": "feature",
              "CI_JOB_URL": "https://gitlab.com/org/repo/-/jobs/7"}
    assert ci_labels(gitlab) == {"ci.provider": "gitlab", "git.sha": "def456",
                                 "git.branch": "feature",
                                 "ci.run_url": "https://gitlab.com/org/repo/-/jobs/7"}
    with pytest.raises(ConfigError, match="no CI environment"):
        ci_labels({})


def test_default_registry_location(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "home"))
    with Registry() as registry:
        assert registry.url == f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    monkeypatch.setenv("ADAPTERHUB_DB", str(tmp_path / "elsewhere.db"))
    with Registry() as registry:
        assert registry.url.endswith("elsewhere.db")


def test_push_survives_a_gc_between_upload_and_commit(reg):
    """A gc run with no grace period sweeps the blobs a push just uploaded; the push notices
    at commit (MissingBlobsError), sends them again and commits."""
    from datetime import timedelta

    from adapterhub.registry.remotes import DatabaseRemote, send_version
    from adapterhub.registry.sources import PackageSource

    class GcBeforeFirstCommit(DatabaseRemote):
        swept = 0

        def commit(self, *args, **kwargs):
            if not self.swept:
                self.swept = self.service.gc(grace=timedelta(0), caller=LOCAL).blobs_removed
            return super().commit(*args, **kwargs)

    remote = GcBeforeFirstCommit(reg.url, service=reg.service)
    source = PackageSource(lora(3))
    result = send_version(remote, "team/bot", source.manifest, source.read_blobs,
                          show_progress=False)
    assert remote.swept == 4 and result.created
    assert same_tensors(reg.get("team/bot@1").tensors, lora(3).tensors) and reg.verify().ok
