"""Tensor I/O: safetensors files, base checkpoints, adapter packages and the file layouts of
other tools (PEFT, vLLM, TensorRT-LLM, a Hugging Face cache)."""
