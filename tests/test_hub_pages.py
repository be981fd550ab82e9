"""The hub's pages as a person sees them: real headless Chromium (Debian's, driven by
Playwright; no browser is downloaded) against a real uvicorn hub over a registry seeded
through the Python API and ``adapterhub merge`` (see ``helpers/pages_seed.py``).

Each test opens pages, reads what is rendered (text, links, SVG nodes and points), follows
links and forms as a person would, and saves a screenshot: to ``$ADAPTERHUB_SCREENSHOTS``
when set (``make screenshots`` writes the ones ``docs/hub.md`` shows into ``docs/img``),
else to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from helpers.hub_server import HubServer
from helpers.pages_seed import BOT_VERSIONS, seed_hub
from playwright.sync_api import Page, sync_playwright

from adapterhub.cli import cli
from adapterhub.io.formats.repo import native_files
from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    made = seed_hub(root / "hub.db", root / "tiny-mlp")
    with HubServer(str(root / "hub.db"), auth="read-public") as server:
        server.root, server.made = root, made
        yield server


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run 'make test' (it installs Debian's "
                    "chromium) or 'apt-get install -y chromium'")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, chromium_sandbox=False,
                                     args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    yield context.new_page()
    context.close()


def shot(target, name: str, tmp_path: Path) -> Path:
    """Save a screenshot of a page (whole) or an element; check it is a real picture."""
    folder = Path(os.environ.get("ADAPTERHUB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"hub-{name}.png"
    if isinstance(target, Page):
        target.screenshot(path=str(path), full_page=True)
    else:
        target.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    return path


def open_page(page: Page, url: str) -> None:
    response = page.goto(url)
    assert response is not None and response.status == 200, (url, response and response.status)


def kv(page: Page, section: str) -> dict[str, str]:
    """The rows of the key/value table right after heading ``section``."""
    table = page.locator(f"h2:text-is('{section}') + table.kv")
    return {row.locator("th").inner_text().strip(): row.locator("td").inner_text().strip()
            for row in table.locator("tr").all()}


# -- the version page ---------------------------------------------------------------------


def test_version_page_shows_what_a_person_needs(hub, page, tmp_path):
    open_page(page, f"{hub.url}/team/bot")  # what Hugging Face users type: the newest
    heading = page.locator("main > h1").inner_text()
    assert "team/bot" in heading and "@3" in heading and "prod" in heading
    assert "latest" in heading
    # the card: its heading, its metadata, a table and a code block from its Markdown
    card = page.locator("#card")
    assert card.locator("h1").inner_text() == "Support bot adapter"
    meta = {r.locator("th").inner_text(): r.locator("td").inner_text()
            for r in card.locator("details table tr").all()}
    assert meta["license"] == "apache-2.0" and meta["tags"] == "lora, support, adapterhub"
    assert "dev\t0.91" in card.locator(".markdown table").inner_text()
    assert 'revision="prod"' in card.locator("pre").inner_text()
    assert card.get_by_role("link", name="training run").get_attribute("href") == \
        "https://git.example.com/team/bot/actions/runs/1003"

    with Registry(hub.db) as reg:
        version = reg.resolve("team/bot@3")
        package = reg.get(version)
        stored = sum(reg.service.blobs.info(e.digest, caller=reg.caller).stored_size
                     for e in version.manifest.tensors.values())
    details = kv(page, "Details")
    assert details["method"].startswith("lora") and details["base model"] == "tiny-mlp"
    assert details["base fingerprint"] == version.base_fingerprint
    assert details["size"] == "3.0 KiB (3,072 bytes)"  # 4 modules × (4·16 + 32·4) fp32
    assert details["stored size"].endswith(f"({stored:,} bytes, compressed, shared blobs "
                                           f"counted once)")
    config = page.locator("h3:text-is('Configuration') + table").inner_text()
    assert "r\t4" in config and "lora_alpha\t8" in config and '["q", "v"]' in config
    assert kv(page, "Metrics") == {"accuracy": "0.91", "loss": "0.41"}
    labels = page.locator("h2:text-is('Labels') + table")
    assert labels.get_by_role("link", name="c31e58f0").get_attribute("href") == \
        "https://git.example.com/team/bot/commit/c31e58f0"  # CI provenance as links
    assert labels.get_by_role("link", name="https://git.example.com/team/bot/actions/runs/1003"
                              ).count() == 1
    assert "card" not in kv(page, "Labels")  # shown as the card, not as a label
    rows = page.locator("table.tensors tr").all()[1:]
    assert len(rows) == 8
    assert rows[0].inner_text().split("\t") == ["layers.0.q.lora_A", "4 × 16", "F32", "256 B"]
    assert rows[1].inner_text().split("\t") == ["layers.0.q.lora_B", "32 × 4", "F32", "512 B"]
    shot(page, "version", tmp_path)

    # files: follow each download link; the bytes are the version's
    links = {a.inner_text(): a.get_attribute("href")
             for a in page.locator("h3:text-is('PEFT layout (adapter.json: the manifest)') "
                                   "+ table a").all()}
    assert sorted(links) == ["adapter.json", "adapter_config.json", "adapter_model.safetensors"]
    config_file = page.request.get(hub.url + links["adapter_config.json"]).json()
    assert config_file["peft_type"] == "LORA" and config_file["r"] == 4
    native = {a.inner_text(): a.get_attribute("href")
              for a in page.locator("h3:text-is('Native layout') + table a").all()}
    folder = tmp_path / "native"
    folder.mkdir()
    for name, href in native.items():
        (folder / name).write_bytes(page.request.get(hub.url + href).body())
    blobs = {e.digest: package.tensors[n].numpy().tobytes()
             for n, e in version.manifest.tensors.items()}
    assert (folder / "adapter.safetensors").read_bytes() == \
        native_files(version.manifest, blobs)["adapter.safetensors"]
    assert AdapterPackage.load(folder).digest == version.digest  # every tensor verified


def test_the_snippets_work_as_shown(hub, page, tmp_path, monkeypatch):
    open_page(page, f"{hub.url}/team/bot/v3")
    snippets = [s.inner_text() for s in page.locator("pre.snippet").all()]
    pull, load, apply = snippets[:3]
    assert pull.startswith(f"adapterhub pull team/bot@3 --from {hub.url}")
    assert f"export HF_ENDPOINT={hub.url}" in load
    assert 'PeftModel.from_pretrained(base_model, "team/bot", revision="v3")' in load
    assert "adapterhub apply ./tiny-mlp team/bot@sha256:" in apply
    # the pull, as printed (a person's shell joins the continued line)
    args = shlex.split(pull.replace("\\\n", " "))
    assert args[:2] == ["adapterhub", "pull"]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [*args[1:], "--db", str(tmp_path / "mine.db")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "bot-v3")) == ["adapter_config.json",
                                                       "adapter_model.safetensors"]
    # the PEFT snippet, with a tiny model of the base's shape for base_model, and without
    # the token line (this hub lets anyone read)
    model = ("import torch\n"
             "class Layer(torch.nn.Module):\n"
             "    def __init__(self):\n"
             "        super().__init__()\n"
             "        self.q, self.v = torch.nn.Linear(16, 32), torch.nn.Linear(16, 32)\n"
             "class Tiny(torch.nn.Module):\n"
             "    def __init__(self):\n"
             "        super().__init__()\n"
             "        self.layers = torch.nn.ModuleList([Layer(), Layer()])\n"
             "base_model = Tiny()\n")
    script = "\n".join(model if line.startswith("# base_model") else line
                       for line in load.splitlines() if not line.startswith("export HF_TOKEN"))
    script = script.replace("\nEOF", "\nw = model.base_model.model.layers[1].v.lora_A"
                                     "['default'].weight\nprint(w.flatten()[:4].tolist())\nEOF")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_TOKEN", None)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with Registry(hub.db) as reg:
        expected = reg.get("team/bot@3").tensors["layers.1.v.lora_A"].flatten()[:4].tolist()
    assert json.loads(done.stdout.strip().splitlines()[-1]) == pytest.approx(expected)


def test_every_address_of_a_version_and_json_for_api_clients(hub, page):
    for path in ("/team/bot/v1", "/team/bot@1", "/team/bot/baseline", "/team/bot:baseline",
                 f"/team/bot/{hub.made['team/bot@1'][7:47]}"):
        open_page(page, hub.url + path)
        heading = page.locator("main > h1").inner_text()
        assert "@1" in heading and "baseline" in heading and "latest" not in heading, path
        assert page.get_by_text("This version has no model card.").is_visible()
    # a version page links the previous version and a diff with it
    open_page(page, f"{hub.url}/team/bot/v2")
    page.locator(".meta").get_by_role("link", name="team/bot@1").click()
    assert page.url == f"{hub.url}/team/bot/v1"
    missing = page.goto(f"{hub.url}/team/bot/v9")
    assert missing.status == 404 and "not found" in page.locator(".error").inner_text()
    # API and Hugging Face clients keep their JSON on the same paths
    answer = httpx.get(f"{hub.url}/team/bot")
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["digest"] == hub.made["team/bot@3"]
    assert answer.json()["manifest"]["metrics"] == {"accuracy": 0.91, "loss": 0.41}
    assert httpx.get(f"{hub.url}/team/bot/v1").json()["digest"] == hub.made["team/bot@1"]
    missing = httpx.get(f"{hub.url}/team/bot/v9")
    assert missing.status_code == 404 and missing.json()["code"] == "RevisionNotFound"
    hf = httpx.get(f"{hub.url}/team/bot/resolve/v3/adapter_config.json")
    assert hf.status_code == 200 and hf.json()["r"] == 4
    assert httpx.get(f"{hub.url}/api/models/team/bot").json()["sha"] == \
        hub.made["team/bot@3"][7:47]
    # /api/… paths no route serves answer as they did before the pages existed
    assert httpx.get(f"{hub.url}/api/v1/blobs").status_code == 405
    assert httpx.get(f"{hub.url}/api/spaces/team/bot").json()["code"] == "NotFound"


# -- lineage --------------------------------------------------------------------------------


def graph(page: Page) -> tuple[dict, dict]:
    """``({ref or digest: box}, {(parent, child): label})`` of the page's lineage drawing."""
    svg = page.locator("svg.lineage")
    nodes, names = {}, {}
    for node in svg.locator("g.node").all():
        key = node.get_attribute("data-ref") or node.get_attribute("data-digest")
        names[node.get_attribute("data-digest")] = key
        nodes[key] = {"box": node.locator("rect").bounding_box(),
                      "text": node.locator("text").all_text_contents(),
                      "href": node.locator("a").get_attribute("href")
                      if node.locator("a").count() else None,
                      "css": node.get_attribute("class")}
    edges = {(names[e.get_attribute("data-parent")], names[e.get_attribute("data-child")]):
             " ".join(e.locator("text").all_text_contents())
             for e in svg.locator("g.edge").all()}
    return nodes, edges


def test_lineage_graph_draws_merges_and_links_every_node(hub, page, tmp_path):
    open_page(page, f"{hub.url}/team/merged")
    nodes, edges = graph(page)
    assert set(nodes) == {"team/bot@1", "team/bot@2", "team/bot@3", "team/topic@1",
                          "team/merged@1"}
    assert nodes["team/merged@1"]["css"] == "node current" and \
        nodes["team/merged@1"]["href"] is None
    assert nodes["team/merged@1"]["text"][1] == "lora · ties merge · rebuildable"
    assert nodes["team/bot@3"]["text"] == ["team/bot@3", "lora · derived · prod"]
    assert edges == {("team/bot@3", "team/merged@1"): "ties ×0.7",
                     ("team/topic@1", "team/merged@1"): "ties ×0.3",
                     ("team/bot@2", "team/bot@3"): "", ("team/bot@1", "team/bot@2"): ""}
    for parent, child in edges:  # parents are drawn above what was made from them
        assert nodes[parent]["box"]["y"] < nodes[child]["box"]["y"]
    assert nodes["team/topic@1"]["href"] == "/team/topic/v1"
    shot(page.locator("svg.lineage"), "lineage", tmp_path)

    # follow a node: the input's own page draws the merge below it
    page.locator("svg.lineage g.node[data-ref='team/topic@1'] a").click()
    assert page.url == f"{hub.url}/team/topic/v1"
    assert "team/topic" in page.locator("main > h1").inner_text()
    nodes, edges = graph(page)
    assert set(nodes) == {"team/topic@1", "team/merged@1"}
    assert edges == {("team/topic@1", "team/merged@1"): "ties ×0.3"}
    assert nodes["team/topic@1"]["box"]["y"] < nodes["team/merged@1"]["box"]["y"]
    page.locator("svg.lineage g.node[data-ref='team/merged@1'] a").click()
    page.locator("svg.lineage g.node[data-ref='team/bot@3'] a").click()
    assert page.url == f"{hub.url}/team/bot/v3"
    nodes, edges = graph(page)
    assert set(nodes) == {"team/bot@1", "team/bot@2", "team/bot@3", "team/merged@1"}
    assert nodes["team/bot@1"]["box"]["y"] < nodes["team/bot@3"]["box"]["y"] < \
        nodes["team/merged@1"]["box"]["y"]


# -- metrics over versions ------------------------------------------------------------------


def test_metric_plots_over_versions_with_tags(hub, page, tmp_path):
    open_page(page, f"{hub.url}/ui/team/bot")
    captions = page.locator(".plots figcaption").all_inner_texts()
    assert captions == ["accuracy", "loss"]
    for metric in captions:
        plot = page.locator(f"svg.metric[data-metric='{metric}']")
        points = plot.locator("circle.point").all()
        assert [int(p.get_attribute("data-version")) for p in points] == [1, 2, 3]
        values = [float(p.get_attribute("data-value")) for p in points]
        assert values == [m[metric] for m, *_ in BOT_VERSIONS]
        boxes = [p.bounding_box() for p in points]
        xs, ys = [b["x"] for b in boxes], [b["y"] for b in boxes]
        assert xs == sorted(xs) and len(set(xs)) == 3  # left to right by version
        by_value = sorted(range(3), key=lambda i: values[i])
        assert [ys[i] for i in by_value] == sorted(ys, reverse=True)  # higher value, higher up
        tips = [p.locator("title").text_content() for p in points]
        assert tips[1] == f"team/bot@2 {metric} = {values[1]:g}"
        marks = {m.get_attribute("data-version"): m.text_content()
                 for m in plot.locator("g.tagmark").all()}
        assert marks == {"1": "baseline", "3": "prod"}
    shot(page, "repository", tmp_path)
    # a point is a link to its version
    page.locator("svg.metric[data-metric='accuracy'] circle[data-version='2']").click()
    assert page.url == f"{hub.url}/team/bot/v2"
    assert page.locator("svg.metric circle.current").first.get_attribute("data-version") == "2"


# -- diff and search ------------------------------------------------------------------------


def test_diff_page_shows_what_adapterhub_diff_shows(hub, page, tmp_path):
    open_page(page, f"{hub.url}/ui/team/bot")
    form = page.locator("form[action='/diff']")
    assert form.locator("input[name=a]").input_value() == "team/bot@2"
    form.locator("input[name=a]").fill("team/bot@1")
    form.get_by_role("button", name="Compare").click()
    page.wait_for_url("**/diff?*")
    assert page.locator("main > h1").inner_text() == "team/bot@1 → team/bot@3"
    metrics = [r.inner_text().split("\t") for r in page.locator("table.diff-metrics tr").all()]
    assert metrics[1:] == [["accuracy", "0.81", "0.91", "+0.1"],
                           ["loss", "0.62", "0.41", "-0.21"]]
    settings = page.locator("table.diff-settings").inner_text()
    assert "labels.git.sha\t4f2c9e1a\tc31e58f0" in settings
    result = CliRunner().invoke(cli, ["diff", "team/bot@1", "team/bot@3", "--json", "--db",
                                      hub.db], catch_exceptions=False)
    expected = json.loads(result.output)
    assert page.locator("p.summary").inner_text() == \
        f"{expected['changed_tensors']} of {len(expected['tensors'])} tensors differ"
    rows = [r.inner_text().split("\t") for r in page.locator("table.diff-tensors tr").all()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (t["name"], t["status"], f"{t['change_norm']:.4g}") for t in expected["tensors"]
        if t["status"] != "same"]
    shot(page, "diff", tmp_path)
    # API clients get `adapterhub diff --json`
    assert httpx.get(page.url).json() == expected


def test_search_box_finds_names_methods_bases_and_labels(hub, page, tmp_path):
    def search(query: str) -> list[str]:
        page.locator("header form input[name=q]").fill(query)
        page.locator("header form").get_by_role("button", name="Search").click()
        page.wait_for_load_state()
        return [a.inner_text() for a in page.locator("table.results td:first-child a").all()]

    open_page(page, f"{hub.url}/")
    assert search("topic") == ["team/topic@1"]
    assert search("git.branch=main") == ["team/bot@3", "team/bot@2", "team/bot@1"]
    assert search("tiny-mlp prod") == ["team/bot@3"]
    assert search("LORA merged") == ["team/merged@1"]
    with Registry(hub.db) as reg:
        fingerprint = reg.resolve("team/topic").base_fingerprint
    assert len(search(fingerprint[:20])) == 5  # every version was trained on that base
    assert search("c31e58f0") == ["team/bot@3"]
    assert "label git.sha=c31e58f0" in page.locator("table.results").inner_text()
    assert search("no-such-thing") == [] and page.get_by_text("Nothing found.").is_visible()
    search("main")
    shot(page, "search", tmp_path)
    page.locator("table.results").get_by_role("link", name="team/bot@2").click()
    assert page.url == f"{hub.url}/team/bot/v2"
    found = httpx.get(f"{hub.url}/search", params={"q": "topic"}).json()
    assert [v["ref"] for v in found["versions"]] == ["team/topic@1"]


def test_pages_need_a_token_under_auth_required(hub, browser, tmp_path):
    """A browser sends no token by itself: under --auth required it gets the API's 401 (as
    a page); a browser that sends one (a proxy adding the header) gets the pages its
    scopes allow, and 403 elsewhere."""
    with HubServer(hub.db, auth="required") as server:
        token = server.token("read:team")
        anonymous = browser.new_context()
        for path in ("/", "/team/bot", "/ui/team/bot", "/diff?a=team/bot@1&b=team/bot@2",
                     "/search?q=bot"):
            response = anonymous.new_page().goto(server.url + path)
            assert response.status == 401, path
        anonymous.close()
        reader = browser.new_context(extra_http_headers={"Authorization": f"Bearer {token}"})
        page = reader.new_page()
        open_page(page, f"{server.url}/team/bot")
        assert page.locator("#card h1").inner_text() == "Support bot adapter"
        outsider = server.token("read:other")
        other = browser.new_context(extra_http_headers={"Authorization": f"Bearer {outsider}"})
        response = other.new_page().goto(f"{server.url}/team/bot")
        assert response.status == 403
        reader.close()
        other.close()
