from adapterhub.testing import MethodConformance


class TestDora(MethodConformance):
    method = "dora"
    config = {"r": 4, "lora_alpha": 8}


class TestDoraDropoutRandomInit(MethodConformance):
    """Dropout on (PEFT's other forward path) and B ≠ 0 at init, so the magnitude starts at
    ‖W + s·B A‖ rather than ‖W‖."""

    method = "dora"
    config = {"r": 2, "lora_alpha": 4, "lora_dropout": 0.1, "init_lora_weights": False,
              "use_rslora": True}
