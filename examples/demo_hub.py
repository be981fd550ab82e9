"""The hub step of the demo: serve a registry over HTTP, push an adapter to it with a token,
pull it into a second registry, and show what Hugging Face clients see.

``run(workdir, adapter_dir)`` is called by ``examples/demo.py``; run this file alone to try it
on a small generated LoRA adapter.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(workdir: pathlib.Path, adapter_dir: pathlib.Path) -> None:
    """Start ``adapterhub serve`` over a registry in ``workdir``, push, pull, stop it."""
    import httpx

    from adapterhub.cli.output import human_size
    from adapterhub.registry import Registry

    workdir.mkdir(parents=True, exist_ok=True)
    hub_db = workdir / "hub.db"
    with Registry(hub_db) as hub_registry:
        token, info = hub_registry.service.tokens.create(["write:demo"], name="demo")
    print(f"token     {info.prefix}…  scopes {', '.join(map(str, info.scopes))} (shown once, "
          f"stored hashed)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / "hub.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "adapterhub.cli", "serve", "--db",
                               str(hub_db), "--port", str(port)], stdout=log,
                              stderr=subprocess.STDOUT)
    previous = os.environ.get("ADAPTERHUB_TOKEN")
    os.environ["ADAPTERHUB_TOKEN"] = token
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"demo failed: the hub did not start (see {workdir / 'hub.log'})")
        print(f"serve     {url}  (adapterhub serve --db {hub_db.name} --port {port})")

        with Registry(workdir / "laptop.db") as laptop:
            start = time.perf_counter()
            pushed = laptop.push(adapter_dir, "demo/adapter", to=url, tags=["prod"],
                                 message="from the demo", progress=False).version
            print(f"push      {pushed.ref} to the hub  {pushed.digest[:23]}…  "
                  f"{human_size(pushed.size)} in {time.perf_counter() - start:.2f} s")
        with Registry(workdir / "server2.db") as second:
            pulled = second.pull("demo/adapter:prod", url, progress=False)
            same = "same digest" if pulled.digest == pushed.digest else "DIGEST DIFFERS"
            print(f"pull      into a second registry: {pulled.ref}, {same}, every byte "
                  f"re-hashed")
            if pulled.digest != pushed.digest:
                raise SystemExit("demo failed: the pulled version differs")

        headers = {"Authorization": f"Bearer {token}"}
        model = httpx.get(f"{url}/api/models/demo/adapter/revision/v1", headers=headers).json()
        files = ", ".join(s["rfilename"] for s in model["siblings"])
        print(f"HF view   HF_ENDPOINT={url} → demo/adapter revision v1 = commit "
              f"{model['sha'][:12]}…: {files}")
        anonymous = httpx.get(f"{url}/api/v1/versions").status_code
        print(f"auth      a request without a token → HTTP {anonymous}; HTML view at {url}/")
    finally:
        if previous is None:
            os.environ.pop("ADAPTERHUB_TOKEN", None)
        else:
            os.environ["ADAPTERHUB_TOKEN"] = previous
        server.terminate()
        server.wait(timeout=30)
        log.close()
    print("stop      hub stopped")


if __name__ == "__main__":
    from demo_registry import tiny_adapter

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        run(root / "work", tiny_adapter(root / "adapter"))
