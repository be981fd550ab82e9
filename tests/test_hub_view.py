"""The HTML view as a person sees it: rendered by real headless Chromium (Debian's
``chromium``, installed by ``make test``; missing Chromium fails, it is not skipped)."""

import shutil
import subprocess

import pytest
import torch
from helpers.hub_server import HubServer

from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium(*args, tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is not installed: run 'make test' (it installs Debian's "
                    "chromium) or 'apt-get install -y chromium'")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def lora(seed, **fields):
    g = torch.Generator().manual_seed(seed)
    tensors = {"lin0.lora_A": torch.randn(4, 16, generator=g),
               "lin0.lora_B": torch.randn(32, 4, generator=g)}
    return AdapterPackage.build("lora", {"r": 4, "lora_alpha": 8, "target_modules": ["lin0"]},
                                tensors, base_name="tiny-mlp", **fields)


def test_html_view_in_headless_chromium(tmp_path):
    with Registry(tmp_path / "hub.db") as reg:
        first = reg.push(lora(0), "team/bot", message="first cut", progress=False).version
        reg.push(lora(1, parents=(first.digest,)), "team/bot", message="<script>alert(1)"
                 "</script> fine-tuned", tags=["prod"], progress=False)
        reg.push(lora(2, parents=(first.digest,)), "team/bot-merged", progress=False)
    with HubServer(str(tmp_path / "hub.db"), auth="read-public") as server:
        index = chromium("--dump-dom", f"{server.url}/", tmp_path=tmp_path)
        page = chromium("--dump-dom", f"{server.url}/ui/team/bot", tmp_path=tmp_path)
        shot = tmp_path / "repo.png"
        chromium("--window-size=1400,600", f"--screenshot={shot}", f"{server.url}/ui/team/bot",
                 tmp_path=tmp_path)
    assert "team/bot" in index and "team/bot-merged" in index
    assert "team/bot@2" in index and ">prod<" in index and "tiny-mlp" in index
    assert "768 B" in index  # sizes as a person reads them (4·16 + 32·4 fp32 values)
    rows = page.split("<tr")
    assert "team/bot@2" in rows[2] and "prod" in rows[2] and "team/bot@1" in rows[2]
    assert "team/bot-merged@1" in rows[3]  # lineage both ways: children of v1
    # the message is shown as text, never run as markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt; fine-tuned" in page
    assert "<script>" not in page
    assert shot.stat().st_size > 5000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
