"""compile_engine step: CPU engine (equivalence-checked, timed) and TensorRT-LLM (or its recorded skip)."""
