"""QLoRA's base quantizers: bitsandbytes' NF4 and FP4 formats, bit-exact, in plain PyTorch."""

from adapterhub import hookimpl


@hookimpl
def adapterhub_register_quantizers(register):
    from adapterhub_qlora.quantizer import FP4Quantizer, NF4Quantizer

    register(NF4Quantizer)
    register(FP4Quantizer)
