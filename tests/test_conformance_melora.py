from adapterhub.testing import MethodConformance


class TestMelora(MethodConformance):
    method = "melora"
    config = {"r": 2, "n": 4, "lora_alpha": 4}


class TestMeloraMiniRankOne(MethodConformance):
    method = "melora"
    config = {"r": 1, "n": 8, "lora_alpha": 2}
