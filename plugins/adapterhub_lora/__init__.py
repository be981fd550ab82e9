"""LoRA (Hu et al. 2021) with PEFT's semantics: the baseline method plugin."""

from adapterhub import hookimpl


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_lora.method import LoraMethod

    register(LoraMethod)
