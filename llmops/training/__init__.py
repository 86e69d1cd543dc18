"""The reusable training library: what a LoRA fine-tuning step is built from, apart from the step itself.

    model       base + LoRA (PEFT), FSDP2/DDP wrapping, adapter and optimizer state gather/restore, PEFT save
    attention   packed-sequence attention ("packed_sdpa"): scores only pairs inside one example
    data        records -> tokenised examples -> packed blocks -> batches; the loss; the seeded block stream
    optim       learning-rate schedule, per-step dropout seeds, one optimizer step (clip, scaler)
    preference  DPO: preference pairs packed whole, sequence log-probs, the loss against the adapter-disabled base
    preference_split  preference pairs built from the instruction corpus (hard negatives), for DPO and the gate
    checkpoint  trainer checkpoints as safetensors + JSON (nothing pickled)
    storage     files between local paths and shared storage URIs; the base checkpoint for remote workers
    flops       an honest FLOP count of one LoRA step from the batch layout really run

`components/train/` holds the step that drives these (Ray Train job, worker loop, MLflow logging);
benchmarks import only the public names here. Modules import torch/transformers lazily where they can,
so importing the package stays cheap.
"""
