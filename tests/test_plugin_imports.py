"""Importing the method plugins (and their public config classes) stays free of torch."""

import subprocess
import sys


def test_plugin_modules_import_without_torch():
    code = ("import sys\n"
            "import adapterhub_lora, adapterhub_loraplus, adapterhub_melora, adapterhub_dora\n"
            "import adapterhub_replora\n"
            "from adapterhub_replora import ReploraConfig\n"
            "from adapterhub_lora import LoraConfig\n"
            "from adapterhub_loraplus import LoraPlusConfig\n"
            "from adapterhub_melora import MeloraConfig\n"
            "assert issubclass(LoraPlusConfig, LoraConfig)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "from adapterhub_loraplus import LoraPlusMethod\n"
            "from adapterhub_lora import LoraMethod\n"
            "assert issubclass(LoraPlusMethod, LoraMethod)\n")
    _run(code)


def test_method_lookup_imports_no_torch():
    """What a hub does to render a version's files: every installed method looked up, its
    PEFT type read."""
    code = ("import sys\n"
            "from adapterhub.contracts.plugins import get_method, plugin_manager\n"
            "names = sorted(plugin_manager().registered('method'))\n"
            "assert {'lora', 'dora', 'melora', 'replora', 'ttlora_moe'} <= set(names), names\n"
            "for name in names:\n"
            "    get_method(name).peft_type\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    _run(code)


def _run(code: str) -> None:
    """Run ``code`` in a fresh interpreter (a clean ``sys.modules``); fail with its stderr."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
