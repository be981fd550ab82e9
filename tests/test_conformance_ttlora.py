from adapterhub.testing import MethodConformance


class TestTTLora(MethodConformance):
    """The reference's init: unit-norm random cores, so ΔW ≠ 0 at step 0."""

    method = "ttlora"
    config = {"r": 3, "alpha": 4.0}


class TestTTLoraZeroInit(MethodConformance):
    """Last core zeroed: the adapted model equals the base model at step 0."""

    method = "ttlora"
    config = {"r": 4, "alpha": 2.0, "init": "zero", "factors": {"lin1": [[2, 4, 4], [4, 4]]}}
