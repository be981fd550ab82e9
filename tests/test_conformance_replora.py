from adapterhub.testing import MethodConformance


class TestReplora(MethodConformance):
    method = "replora"
    config = {"r": 4, "lora_alpha": 8}


class TestReploraSharedAcrossModelLinear(MethodConformance):
    """One generator for every projection, the linear reparameterisation, a wider hidden
    layer, dropout and random B at init."""

    method = "replora"
    config = {"r": 2, "lora_alpha": 4, "share": "model", "activation": "identity",
              "hidden": 6, "latent": 3, "lora_dropout": 0.1, "init_lora_weights": False}
