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
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
