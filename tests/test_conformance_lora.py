from adapterhub.testing import MethodConformance


class TestLora(MethodConformance):
    method = "lora"
    config = {"r": 4, "lora_alpha": 8}


class TestLoraRsloraGaussian(MethodConformance):
    method = "lora"
    config = {"r": 4, "lora_alpha": 16, "use_rslora": True, "init_lora_weights": "gaussian",
              "rank_pattern": {"lin1": 2}}
