"""GPU training throughput of our training step (packing + LoRA + FSDP2, bf16) vs padding every example to 256.

Runs the worker's own pieces — `llmops.training.data` (encode, pack, collate, loss) and
`llmops.training.model` (PEFT LoRA, FSDP2 `fully_shard`) — in one process on one CUDA device, without
Ray (Ray orchestration adds start-up, not per-step cost). The baseline is the same model, LoRA config,
optimizer and precision with every example padded to 256 tokens, batched to the same number of examples
per step. Both run the same number of optimizer steps over the same examples, one after the other.

Reported: useful (non-padding) tokens/s of each and their ratio; model FLOP utilisation with the standard
estimate 6 * N * tokens (N = all parameters) against this GPU's bf16 matmul FLOP/s measured here.

`--random-init` builds the SmolLM2-135M architecture from `config.json` with random weights: throughput
does not depend on the weights, and the 517 MB checkpoint does not need to travel to the GPU machine.
Skips cleanly (exit 0, a message) when no CUDA device is present. Not part of the test suite.
    python benchmarks/gpu_train_step.py --model-dir .llmops/models/smollm2-135m-instruct --steps 30 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def bf16_matmul_flops(size: int = 8192, reps: int = 20) -> float:
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * reps / (time.perf_counter() - t0)


def _init_dist() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("nccl", rank=0, world_size=1)


def _model(model_dir: Path, strategy: str):
    import torch

    from llmops.training import model as lora

    device = torch.device("cuda")
    model = lora.build_lora_model(model_dir, LORA, seed=42, device=device)
    if strategy == "fsdp":
        _init_dist()
        model = lora.wrap(model, "fsdp", device, world=1)
    return model


def run_steps(model, batches: list[dict], warmup: int = 3) -> dict[str, float]:
    """Optimizer steps over `batches` (after `warmup` untimed ones); returns useful tokens/s and loss."""
    import torch

    from llmops.training.data import loss_sum

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
    model.train()
    tokens, seconds, last = 0, 0.0, float("nan")
    for i, batch in enumerate(batches):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, n = loss_sum(model, batch)
        (loss / max(n, 1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            seconds += time.perf_counter() - t0
            tokens += int(batch["useful_tokens"])
        last = loss.item() / max(n, 1)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "final_loss": last}


def _batches(examples: list, args: argparse.Namespace, pad: int) -> tuple[list[dict], list[dict]]:
    """Ours: packed blocks; baseline: one example per row padded to 256. Same examples per step."""
    import torch

    from llmops.training.data import collate, pack_examples, single_blocks

    blocks = pack_examples(examples, args.seq_len)
    per_step = math.ceil(len(examples) / len(blocks) * args.blocks_per_step)
    ours, base = [], []
    order = list(range(len(blocks)))
    for s in range(args.steps + 3):
        chosen = [blocks[order[(s * args.blocks_per_step + j) % len(blocks)]] for j in range(args.blocks_per_step)]
        b = {k: v.cuda() for k, v in collate(chosen, pad).items()}
        b["useful_tokens"] = sum(len(x) for x in chosen)
        ours.append(b)
        exs = [examples[(s * per_step + j) % len(examples)] for j in range(per_step)]
        singles = single_blocks(exs)
        pb = collate(singles, pad)
        width = 256  # the common recipe: pad every example to a fixed max_length
        padded = {}
        for k, v in pb.items():
            fill = -100 if k == "targets" else (0 if k == "position_ids" else pad)
            out = torch.full((v.shape[0], width), fill, dtype=v.dtype)
            out[:, : v.shape[1]] = v[:, :width]
            if k == "position_ids":
                out[:, : v.shape[1]] = v[:, :width]
                out[:, v.shape[1]:] = torch.arange(v.shape[1], width)
            padded[k] = out.cuda()
        padded["useful_tokens"] = sum(len(x) for x in singles)
        base.append(padded)
    return ours, base


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / ".llmops/models/smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=REPO / "data/splits/train.jsonl")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq-len", type=int, default=2048, help="packed block length")
    ap.add_argument("--blocks-per-step", type=int, default=8)
    ap.add_argument("--strategy", choices=["fsdp", "none"], default="fsdp")
    ap.add_argument("--random-init", action="store_true", help="random weights from config.json (see above)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: GPU benchmark skipped")
        return {"skipped": "no CUDA device"}
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmops.training.data import encode_records

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    records = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    examples, _ = encode_records(tokenizer, records, 256)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    model_dir = args.model_dir
    tmp = None
    if args.random_init:
        tmp = tempfile.TemporaryDirectory()
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model_dir)).save_pretrained(tmp.name)
        model_dir = Path(tmp.name)

    ours, base = _batches(examples, args, pad)
    peak = bf16_matmul_flops()
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
                   .parameters())
    from llmops import host

    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "host": host.for_benchmark(),
                               "torch": torch.__version__,
                               "strategy": args.strategy, "random_init": args.random_init,
                               "params": n_params, "bf16_matmul_tflops": peak / 1e12}
    for name, batches in (("ours_packed", ours), ("baseline_pad256", base)):
        model = _model(model_dir, args.strategy)
        r = run_steps(model, batches)
        r["mfu"] = 6 * n_params * r["tokens_per_s"] / peak
        r["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        results[name] = r
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    results["ratio_tokens_per_s"] = results["ours_packed"]["tokens_per_s"] / results["baseline_pad256"]["tokens_per_s"]
    print(json.dumps(results, indent=2) if args.json else
          f"ours {results['ours_packed']['tokens_per_s']:.0f} tok/s (MFU {results['ours_packed']['mfu']:.1%}) vs "
          f"pad-256 baseline {results['baseline_pad256']['tokens_per_s']:.0f} tok/s: "
          f"ratio {results['ratio_tokens_per_s']:.2f}x on {results['device']}")
    return results


if __name__ == "__main__":
    main()
