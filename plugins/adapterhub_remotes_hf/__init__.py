"""The ``hf`` remote: ``hf://ns/repo`` on the Hugging Face Hub (or whatever ``HF_ENDPOINT``
names, such as an ``adapterhub serve`` hub), through ``huggingface_hub``.

Registered through the ``adapterhub_register_remotes`` hook like any third-party remote kind;
see :mod:`adapterhub_remotes_hf.remote`.
"""

from adapterhub import hookimpl


@hookimpl
def adapterhub_register_remotes(register):
    from adapterhub_remotes_hf.remote import HfRemote

    register("hf", HfRemote)
