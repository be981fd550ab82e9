"""A throwaway PostgreSQL server for the registry tests (``initdb`` + ``pg_ctl`` on a temp dir).

Binaries come from ``pg_config --bindir``; as root they run as the ``postgres`` user. No
binaries is an error, not a skip: the registry must be tested on PostgreSQL too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def _bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        raise PostgresUnavailable(
            "PostgreSQL binaries not found (no pg_config on PATH): the registry tests run "
            "against a real PostgreSQL server; install it (e.g. apt-get install postgresql)")
    bindir = Path(subprocess.run([pg_config, "--bindir"], check=True, capture_output=True,
                                 text=True).stdout.strip())
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (bindir / tool).exists():
            raise PostgresUnavailable(f"{bindir / tool} is missing; install the PostgreSQL "
                                      f"server package")
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``start()`` a cluster on 127.0.0.1 and a free port; ``stop()`` removes it."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        # memory-backed when available: the suite creates and drops many databases
        shm = Path("/dev/shm")
        self.root = Path(tempfile.mkdtemp(prefix="adapterhub-pg-", dir=shm if shm.is_dir()
                                          and os.access(shm, os.W_OK) else None))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:  # the server refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise PostgresUnavailable(f"{' '.join(args[:1])} failed: {result.stderr.strip()}")

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                  "-E", "UTF8")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   f"-c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=256MB "
                   f"-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self):
        import psycopg

        return psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                               autocommit=True)

    def create_database(self, name: str) -> str:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
