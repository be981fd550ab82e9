"""A real out-of-tree plugin distribution, installed with pip, is discovered; a broken one is
isolated. The third party also runs the conformance suite on its method, as documented."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOY_METHOD = '''
import torch
from torch import nn
from dataclasses import dataclass, field

from adapterhub import AdapterMethod, MethodConfig
from adapterhub.contracts.layers import AdaptedLayer


@dataclass
class OuterConfig(MethodConfig):
    init_scale: float = field(default=0.0, metadata={"help": "initial size of u"})


class OuterLayer(AdaptedLayer):
    def __init__(self, base, method, config, path):
        super().__init__(base, method, config, path)
        d_out, d_in = base.weight.shape
        self.u = nn.Parameter(torch.full((d_out,), config.init_scale))
        self.v = nn.Parameter(torch.randn(d_in) / d_in ** 0.5)

    def adapter_forward(self, x):
        return (x @ self.v).unsqueeze(-1) * self.u


class OuterMethod(AdapterMethod):
    """A rank-1 update u v^T: the smallest method worth the name."""

    name = "outer"
    Config = OuterConfig
    description = "rank-1 outer-product delta (third-party example)"
    layer_kinds = ("linear",)

    def make_layer(self, base, config, path):
        return OuterLayer(base, self, config, path)

    def infer_base_shape(self, module, tensors, config):
        return (tensors["u"].shape[0], tensors["v"].shape[0])

    def delta_weight(self, module, tensors, config, base_shape):
        return torch.outer(tensors["u"].float(), tensors["v"].float())
'''

TOY_INIT = '''
from adapterhub import hookimpl


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_outer.method import OuterMethod

    register(OuterMethod)
'''

TOY_CONFORMANCE = '''
from adapterhub.testing import MethodConformance


class TestOuter(MethodConformance):
    method = "outer"


def test_fixture_from_the_pytest_plugin(tiny_mlp):
    assert tiny_mlp.lin0.in_features == 16
'''


def make_dist(root: Path, dist: str, module: str, entry: str, files: dict[str, str]) -> Path:
    src = root / dist
    (src / module).mkdir(parents=True)
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.3.0"

        [project.entry-points.adapterhub]
        {entry} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
    """))
    for name, text in files.items():
        (src / module / name).write_text(text)
    return src


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A pip --target directory holding two freshly built plugin distributions."""
    root = tmp_path_factory.mktemp("dists")
    target = root / "site"
    good = make_dist(root, "adapterhub-outer", "adapterhub_outer", "outer",
                     {"__init__.py": TOY_INIT, "method.py": TOY_METHOD})
    broken = make_dist(root, "adapterhub-broken", "adapterhub_broken", "broken",
                       {"__init__.py": "raise RuntimeError('boom: missing dependency')\n"})
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target),
                    str(good), str(broken)], check=True)
    return target


def run(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("ADAPTERHUB_PLUGINS", None)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          cwd=cwd)


CLI = ["-m", "adapterhub.cli"]


def test_installed_plugin_is_listed(site):
    result = run(site, *CLI, "methods", "--json")
    assert result.returncode == 0, result.stderr
    methods = {m["name"]: m for m in json.loads(result.stdout)["methods"]}
    assert {"lora", "outer"} <= set(methods)
    assert methods["outer"]["plugin"] == "outer"
    assert methods["outer"]["config"][-1]["name"] == "init_scale"


def test_broken_plugin_is_named_and_isolated(site):
    result = run(site, *CLI, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["broken"]["ok"] is False
    assert plugins["broken"]["distribution"] == "adapterhub-broken"
    assert "boom: missing dependency" in plugins["broken"]["errors"][0]
    assert plugins["outer"]["ok"] and plugins["outer"]["version"] == "0.3.0"
    assert plugins["outer"]["registered"] == {"method": ["outer"]}
    assert plugins["lora"]["ok"]
    human = run(site, *CLI, "plugins")
    assert "broken" in human.stdout and "FAILED" in human.stdout


def test_plugins_env_restricts_loading(site):
    env_site = {"ADAPTERHUB_PLUGINS": "lora"}
    result = subprocess.run([sys.executable, *CLI, "methods", "--json"], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(site), **env_site})
    assert [m["name"] for m in json.loads(result.stdout)["methods"]] == ["lora"]


def test_third_party_runs_the_conformance_suite(site, tmp_path):
    (tmp_path / "test_outer.py").write_text(TOY_CONFORMANCE)
    result = run(site, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    from adapterhub.testing import MethodConformance

    checks = sum(name.startswith("test_") for name in dir(MethodConformance))
    assert f"{checks + 1} passed" in result.stdout
