from adapterhub.testing import MethodConformance


class TestLoraPlus(MethodConformance):
    method = "loraplus"
    config = {"r": 4, "lora_alpha": 8, "loraplus_lr_ratio": 16}
