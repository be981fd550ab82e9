"""The floor of ``adapterhub pull`` over HTTP, as a fresh process: only the work a pull into a
registry cannot skip, with nothing but the standard library and the codec.

Resolve the version (one ``GET``), fetch every blob as stored in one ``POST …/blobs/stored``,
decode and sha256 each blob on all cores while the stream arrives, insert the blob and chunk
rows into the registry's own tables in one transaction, and close (the WAL checkpoint that
makes the file whole). No access checks, no version row, no audit entry, no progress bar, no
error handling: a lower bound, not a client.

Run by ``benchmarks/pull.py``: ``python benchmarks/_pull_floor.py URL TOKEN REF DB``.
"""

import hashlib
import http.client
import json
import os
import sqlite3
import struct
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from registry_db.codec import decode


def main(url: str, token: str, ref: str, db: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn.request("GET", "/api/v1/resolve?" + urllib.parse.urlencode({"ref": ref}),
                 headers=headers)
    version = json.loads(conn.getresponse().read())
    digests = sorted({entry["digest"] for entry in version["manifest"]["tensors"].values()})
    name = version["name"]
    conn.request("POST", f"/api/v1/repos/{name}/blobs/stored",
                 json.dumps({"digests": digests}), headers)
    response = conn.getresponse()

    def verify(header: dict, chunks: list[bytes]) -> None:
        raw = b"".join(decode(data, header["codec"], size)
                       for (size, _), data in zip(header["chunks"], chunks))
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == header["digest"]

    now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(" ")
    db_conn = sqlite3.connect(db, isolation_level=None)
    db_conn.execute("PRAGMA synchronous = NORMAL")
    db_conn.execute("BEGIN IMMEDIATE")
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        checks = []
        for _ in digests:
            (length,) = struct.unpack("<Q", response.read(8))
            header = json.loads(response.read(length))
            chunks = [response.read(stored) for _, stored in header["chunks"]]
            checks.append(pool.submit(verify, header, chunks))
            blob_id = db_conn.execute(
                "INSERT INTO blobs (digest, size, stored_size, codec, chunk_size, complete, "
                "created_at, touched_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                (header["digest"], header["size"], sum(len(c) for c in chunks),
                 header["codec"], header["chunk_size"], now, now)).lastrowid
            db_conn.executemany(
                'INSERT INTO chunks (blob_id, "index", raw_size, data) VALUES (?, ?, ?, ?)',
                [(blob_id, i, size, data)
                 for i, ((size, _), data) in enumerate(zip(header["chunks"], chunks))])
        for check in checks:
            check.result()
    db_conn.execute("COMMIT")
    db_conn.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
