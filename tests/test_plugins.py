"""The plugin manager: registration rules, isolation of a failing plugin, lookups."""

import pytest

import adapterhub
from adapterhub import hookimpl
from adapterhub.contracts.plugins import get_plugin_manager


class Tiny(adapterhub.AdapterMethod):
    name = "tiny"


class Registers:
    def __init__(self, *objs):
        self.objs = objs

    @hookimpl
    def adapterhub_register_methods(self, register):
        for obj in self.objs:
            register(obj)


def manager(**plugins):
    pm = get_plugin_manager(load_entry_points=False)
    for name, plugin in plugins.items():
        pm.add_plugin(plugin, name)
    return pm


def test_registration_and_lookup():
    pm = manager(a=Registers(Tiny))
    assert pm.lookup("method", "tiny") is Tiny
    assert pm.registered("method")["tiny"].plugin == "a"
    assert pm.plugin_infos()[0].registered == {"method": ["tiny"]}
    with pytest.raises(adapterhub.UnknownMethodError, match="installed: tiny"):
        pm.lookup("method", "nope")


def test_duplicate_name_is_refused_and_first_wins():
    class Other(Tiny):
        pass

    pm = manager(first=Registers(Tiny), second=Registers(Other))
    assert pm.lookup("method", "tiny") is Tiny
    assert "already registered by first" in pm.infos["second"].errors[0]
    assert pm.infos["first"].ok


@pytest.mark.parametrize("bad, message", [
    (type("Upper", (adapterhub.AdapterMethod,), {"name": "Bad-Name"}), "invalid name"),
    (object, "not a subclass of AdapterMethod"),
])
def test_invalid_registrations_are_reported_by_plugin(bad, message):
    pm = manager(bad=Registers(bad), good=Registers(Tiny))
    infos = {info.name: info for info in pm.plugin_infos()}
    assert message in infos["bad"].errors[0]
    assert pm.lookup("method", "tiny") is Tiny
    failures = pm.failures()
    assert [f.plugin for f in failures] == ["bad"]


def test_hook_that_raises_is_isolated():
    class Raises:
        @hookimpl
        def adapterhub_register_methods(self, register):
            raise RuntimeError("kaboom")

    pm = manager(raises=Raises(), good=Registers(Tiny))
    infos = {info.name: info for info in pm.plugin_infos()}
    assert "kaboom" in infos["raises"].errors[0]
    assert set(pm.registered("method")) == {"tiny"}


def test_builtin_lora_comes_through_its_entry_point():
    pm = get_plugin_manager()
    assert pm.infos["lora"].dist == "adapterhub"
    assert pm.registered("method")["lora"].plugin == "lora"


def test_plugins_env_var(monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_PLUGINS", "")
    assert get_plugin_manager().registered("method") == {}


def test_importing_adapterhub_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, adapterhub, adapterhub.cli, adapterhub_lora; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# -- one test per hook (tests/test_docs.py checks they exist) ---------------------------------


def test_hook_adapterhub_register_methods():
    pm = manager(a=Registers(Tiny))
    assert pm.registered("method")["tiny"].obj is Tiny


def test_hook_adapterhub_register_quantizers():
    class Q(adapterhub.Quantizer):
        name = "q4"

    class Plugin:
        @hookimpl
        def adapterhub_register_quantizers(self, register):
            register(Q)
            register(Tiny)  # not a Quantizer: refused, Q stays

    pm = manager(p=Plugin())
    assert pm.lookup("quantizer", "q4") is Q
    assert "not a subclass of Quantizer" in pm.plugin_infos()[0].errors[0]


def test_hook_adapterhub_register_merge_strategies():
    from adapterhub.contracts.strategy import MergeStrategy

    class Mean(MergeStrategy):
        name = "mean"

    class Plugin:
        @hookimpl
        def adapterhub_register_merge_strategies(self, register):
            register(Mean)
            register(Tiny)  # not a MergeStrategy: refused

    pm = manager(p=Plugin())
    assert pm.lookup("strategy", "mean") is Mean
    assert "not a subclass of MergeStrategy" in pm.plugin_infos()[0].errors[0]


def test_hook_adapterhub_register_remotes():
    class Carrier:
        pass

    class Plugin:
        @hookimpl
        def adapterhub_register_remotes(self, register):
            register("pigeon", Carrier)

    pm = manager(p=Plugin())
    assert pm.lookup("remote", "pigeon") is Carrier
    assert pm.plugin_infos()[0].registered == {"remote": ["pigeon"]}


def test_hook_adapterhub_register_commands():
    import click
    from click.testing import CliRunner

    class Plugin:
        @hookimpl
        def adapterhub_register_commands(self, cli):
            @cli.command()
            def hello():
                """Say hello."""
                click.echo("hello from a plugin")

    @click.group()
    def root():
        pass

    manager(p=Plugin()).add_commands(root)
    assert CliRunner().invoke(root, ["hello"]).output == "hello from a plugin\n"
