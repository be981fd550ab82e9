"""The Hugging Face LFS upload on the ``s3`` blob backend (real ``adapterhub serve``, real
SeaweedFS, the real ``huggingface_hub`` client with Xet off): the LFS batch answer hands out
presigned URLs of the object store, one ``PUT`` for a small file and HF's multipart parts of
``chunk_size`` bytes for a large one, so the bytes never pass through the hub; the hub reads
the staging object back before it becomes the blob, so a client that sends other bytes gets
nothing stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import httpx

from registry_db.objectstore import PART_SIZE, Location

UPLOAD = textwrap.dedent("""
    import hashlib, json, os, sys
    from huggingface_hub import HfApi, hf_hub_download
    folder = sys.argv[1]
    api = HfApi()
    api.create_repo("team/files", exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id="team/files")
    back = {}
    for name in sorted(os.listdir(folder)):
        path = hf_hub_download("team/files", name)
        back[name] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    print(json.dumps(back))
    """)


def test_lfs_uploads_go_straight_to_the_object_store(s3_hub, s3_env, seaweed, tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "files"
    folder.mkdir()
    tensors = {f"base_model.model.layer.{i}.query.lora_{ab}.weight":
               torch.randn(*((4, 64) if ab == "A" else (64, 4))) for i in range(2) for ab in "AB"}
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query"],
        "base_model_name_or_path": "tiny", "task_type": None}))
    files = {"small.bin": os.urandom(3 << 20),  # one presigned PUT
             "large.bin": os.urandom(PART_SIZE + (4 << 20))}  # two parts + completion
    for name, data in files.items():
        (folder / name).write_bytes(data)
    files = {f.name: f.read_bytes() for f in folder.iterdir()}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
           "HF_ENDPOINT": s3_hub.url, "HF_TOKEN": s3_hub.tokens["writer"],
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1"}
    result = subprocess.run([sys.executable, "-c", UPLOAD, str(folder)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    assert json.loads(result.stdout.strip().splitlines()[-1]) == sha

    requests = [(r["method"], r["path"], r["status"]) for r in map(json.loads, (
        line for line in s3_hub.log_path.read_text().splitlines() if line.startswith("{")))]
    assert not [r for r in requests if r[0] == "PUT"]  # the bytes went to the store
    assert ("POST", f"/api/hub/lfs/team/files/{sha['large.bin']}", 200) in requests
    assert not [r for r in requests if r[1].startswith("/api/hub/lfs/")
                and sha["large.bin"] not in r[1]]  # one PUT, finished by verify
    location = Location.parse(s3_env)
    s3 = seaweed.client()
    for name in ("small.bin", "large.bin"):
        data = files[name]
        head = s3.head_object(Bucket=location.bucket,
                              Key=f"reg/blobs/sha256/{sha[name][:2]}/{sha[name][2:]}")
        assert head["ContentLength"] == len(data)
    assert not s3.list_objects_v2(Bucket=location.bucket, Prefix="reg/uploads/").get(
        "Contents")  # staging objects are gone
    assert not s3.list_multipart_uploads(Bucket=location.bucket).get("Uploads")


def test_other_bytes_sent_to_an_lfs_url_are_never_stored(s3_hub, s3_env, seaweed):
    data, other = os.urandom(1 << 20), os.urandom(1 << 20)
    oid = hashlib.sha256(data).hexdigest()
    with s3_hub.client("writer") as writer:
        assert writer.post("/api/repos/create", json={"name": "lfs", "organization": "team",
                                                      "type": "model"}).status_code == 200
        batch = writer.post("/team/lfs.git/info/lfs/objects/batch", json={
            "operation": "upload", "transfers": ["basic"],
            "objects": [{"oid": oid, "size": len(data)}]}).json()
        actions = batch["objects"][0]["actions"]
        href = actions["upload"]["href"]
        assert "/reg/uploads/" in href and "X-Amz-Signature" in href  # presigned, staging
        assert httpx.put(href, content=other, timeout=60).status_code == 200
        verify = writer.post(actions["verify"]["href"], json={"oid": oid, "size": len(data)})
        assert verify.status_code == 422 and "discarded" in verify.json()["error"]
        assert writer.post("/api/v1/blobs/missing",
                           json={"digests": [f"sha256:{oid}"]}).json()["missing"]
        again = writer.post(actions["verify"]["href"], json={"oid": oid, "size": len(data)})
        assert again.status_code == 404  # nothing left to finish
    location = Location.parse(s3_env)
    listed = seaweed.client().list_objects_v2(Bucket=location.bucket, Prefix="reg/")
    assert listed.get("KeyCount", 0) == 0
