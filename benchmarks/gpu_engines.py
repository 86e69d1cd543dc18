"""GPU decode: the static-cache CUDA-graph engine vs eager paths, tokens/s and TTFT; ratios in one run.

Sides, all bf16 on the same GPU, greedy, `--new-tokens` per sequence:
- `hf-generate`: transformers `generate` with its default dynamic cache, the batch left-padded — what a user
  writes first;
- `hf-generate-static-compiled`: transformers `generate(cache_implementation="static")`, which compiles the
  decode forward itself (its `compile_config`, CUDA graphs included) — transformers' own optimised path, the
  strongest baseline a user would pick without a serving stack (reported with its error if it fails here;
  wrapping `model.forward` in `torch.compile(mode="reduce-overhead")` by hand fails inside `generate` with
  "accessing tensor output of CUDAGraphs that has been overwritten", measured on the H100);
- `eager-engine`: the server's eager engine on the GPU, driven through prefill/decode like the server does;
- `cuda-graph`: serving/engines/static_cache.py, the engine `--engine auto` picks on a GPU.
Ratios are against the best baseline at each batch size. Equivalence: greedy tokens of the CUDA-graph engine
vs the eager engine, both fp32, over `--check-tokens` tokens per prompt.

The device machines lent here cannot reach a model hub and the base model's 538 MB of weights do not travel,
so `--random-init` builds the SmolLM2-135M architecture from its config.json with random weights: decode speed
does not depend on the weights' values; the equivalence check holds for any weights.

    python -m benchmarks.gpu_engines --model-dir DIR [--random-init] [--batch-sizes 1,8,32] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

PROMPTS = [
    "Explain what a KV cache is in one paragraph.",
    "Write a haiku about GPUs.",
    "List three uses of a canary deployment.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Summarise the plot of Hamlet in two sentences.",
    "def quicksort(xs):",
    "Translate 'good morning' into French, German and Spanish.",
    "Why does the sky look blue?",
]


def _sync() -> None:
    torch.cuda.synchronize()


def random_model_dir(config_dir: Path, out_dir: Path) -> Path:
    """The config's architecture with random weights (seeded), saved as safetensors beside its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json", "special_tokens_map.json"):
        if (config_dir / name).is_file():
            shutil.copy(config_dir / name, out_dir / name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def _prompt_ids(tokenizer, batch: int) -> list[list[int]]:
    return [tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]


def run_engine(engine, prompts: list[list[int]], new_tokens: int) -> dict[str, float]:
    """Prefill every prompt into its slot, then decode the whole batch greedily; TTFT = first prefill."""
    _sync()
    t0 = time.perf_counter()
    first = engine.prefill_many(list(range(len(prompts))), prompts).argmax(dim=-1).tolist()
    _sync()
    prefill_s = time.perf_counter() - t0
    slots = list(range(len(prompts)))
    last = first
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        last = engine.decode(slots, last).argmax(dim=-1).tolist()
    _sync()
    decode_s = time.perf_counter() - t1
    for s in slots:
        engine.release(s)
    return {"tokens_per_s": len(prompts) * new_tokens / (prefill_s + decode_s),
            "decode_tokens_per_s": len(prompts) * (new_tokens - 1) / decode_s,
            "ttft_s": prefill_s, "ms_per_step": 1000 * decode_s / max(1, new_tokens - 1)}


def run_generate(model, tokenizer, prompts: list[list[int]], new_tokens: int, **gen_kw: Any) -> dict[str, float]:
    tokenizer.padding_side = "left"
    enc = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kw = dict(do_sample=False, num_beams=1, pad_token_id=pad, **gen_kw)
    with torch.inference_mode():
        _sync()
        t0 = time.perf_counter()
        model.generate(**enc, max_new_tokens=1, **kw)
        _sync()
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        _sync()
        seconds = time.perf_counter() - t0
    return {"tokens_per_s": len(prompts) * new_tokens / seconds, "ttft_s": ttft}


def equivalence(model_dir: Path, tokens: int, slots: int, fuse: bool = False) -> dict[str, Any]:
    from serving.engines.eager import EagerEngine
    from serving.engines.static_cache import StaticCacheEngine

    eager = EagerEngine(model_dir, max_slots=slots, max_len=1024, device="cuda", dtype=torch.float32)
    graph = StaticCacheEngine(model_dir, max_slots=slots, max_len=1024, dtype=torch.float32, fuse=fuse)
    outs = []
    for engine in (eager, graph):
        prompts = _prompt_ids(engine.tokenizer, slots)
        seqs = [[int(engine.prefill(s, ids).argmax())] for s, ids in enumerate(prompts)]
        for _ in range(tokens - 1):
            nxt = engine.decode(list(range(slots)), [q[-1] for q in seqs]).argmax(dim=-1).tolist()
            for q, t in zip(seqs, nxt, strict=True):
                q.append(t)
        outs.append(seqs)
    identical = sum(a == b for a, b in zip(*outs, strict=True))
    del eager, graph
    torch.cuda.empty_cache()
    return {"prompts": slots, "tokens": tokens, "identical_prompts": identical, "identical_rate": identical / slots}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True, help="checkpoint dir (or config dir with --random-init)")
    ap.add_argument("--random-init", action="store_true", help="random weights of the config's architecture")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--check-tokens", type=int, default=32)
    ap.add_argument("--skip-compiled-baseline", action="store_true")
    ap.add_argument("--fused", action="store_true", help="also measure the engine with Inductor-fused steps")
    ap.add_argument("--json-out", type=Path, default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    model_dir = args.model_dir
    if args.random_init:
        model_dir = random_model_dir(args.model_dir, Path("/tmp/llmops-random-model"))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    slots = max(sizes)
    from llmops import host

    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "host": host.for_benchmark(),
                              "torch": torch.__version__,
                              "weights": "random (architecture from config.json)" if args.random_init else "real",
                              "new_tokens": args.new_tokens, "dtype": "bfloat16", "sides": {}}
    print(f"gpu={report['gpu']} torch={report['torch']} weights={report['weights']}", flush=True)
    report["equivalence_fp32"] = equivalence(model_dir, args.check_tokens, min(8, slots))
    print("equivalence", report["equivalence_fp32"], flush=True)
    if args.fused:
        try:
            report["equivalence_fp32_fused"] = equivalence(model_dir, args.check_tokens, min(8, slots), fuse=True)
        except Exception as exc:
            report["equivalence_fp32_fused"] = f"{type(exc).__name__}: {exc}"[:500]
        print("equivalence fused", report["equivalence_fp32_fused"], flush=True)

    sides = _hf_sides(args, model_dir, sizes, report)
    sides["eager-engine"] = _eager_side(args, model_dir, sizes, slots)
    variants = [("cuda-graph", False)] + ([("cuda-graph-fused", True)] if args.fused else [])
    for name, fuse in list(variants):
        got = _graph_side(args, model_dir, sizes, slots, name, fuse, report)
        if got is None:
            variants.remove((name, fuse))
        else:
            sides[name] = got
        torch.cuda.empty_cache()
    report["sides"] = sides
    report["ratios"] = _ratios(sides, sizes, [name for name, _ in variants])
    print(json.dumps(report["ratios"], indent=2), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2, default=str))
    return 0


def _hf_sides(args: argparse.Namespace, model_dir: Path, sizes: list[int], report: dict[str, Any]
              ) -> dict[str, dict[int, dict[str, float]]]:
    """transformers' generate, eager and (unless skipped) with the compiled static cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    sides: dict[str, dict[int, dict[str, float]]] = {"hf-generate": {}}
    for b in sizes:
        run_generate(model, tokenizer, _prompt_ids(tokenizer, b), 8)  # warm-up
        sides["hf-generate"][b] = run_generate(model, tokenizer, _prompt_ids(tokenizer, b), args.new_tokens)
        print("hf-generate", b, sides["hf-generate"][b], flush=True)
    if not args.skip_compiled_baseline:
        try:
            sides["hf-generate-static-compiled"] = {}
            for b in sizes:
                t0 = time.perf_counter()  # same shapes as the timed run: a static cache recompiles per size
                run_generate(model, tokenizer, _prompt_ids(tokenizer, b), args.new_tokens,
                             cache_implementation="static")
                warm = time.perf_counter() - t0
                r = run_generate(model, tokenizer, _prompt_ids(tokenizer, b), args.new_tokens,
                                 cache_implementation="static")
                sides["hf-generate-static-compiled"][b] = r | {"compile_warmup_s": warm}
                print("hf-generate-static-compiled", b, sides["hf-generate-static-compiled"][b], flush=True)
        except Exception as exc:  # a baseline that cannot run here is reported, never silently dropped
            report["hf_static_compiled_error"] = f"{type(exc).__name__}: {exc}"[:500]
            sides.pop("hf-generate-static-compiled", None)
            print("hf-generate-static-compiled failed:", report["hf_static_compiled_error"], flush=True)
    del model
    torch.cuda.empty_cache()
    return sides


def _eager_side(args: argparse.Namespace, model_dir: Path, sizes: list[int], slots: int
                ) -> dict[int, dict[str, float]]:
    from serving.engines.eager import EagerEngine

    eager = EagerEngine(model_dir, max_slots=slots, max_len=1024, device="cuda", dtype=torch.bfloat16)
    out = {}
    for b in sizes:
        run_engine(eager, _prompt_ids(eager.tokenizer, b), 8)
        out[b] = run_engine(eager, _prompt_ids(eager.tokenizer, b), args.new_tokens)
        print("eager-engine", b, out[b], flush=True)
    del eager
    torch.cuda.empty_cache()
    return out


def _graph_side(args: argparse.Namespace, model_dir: Path, sizes: list[int], slots: int, name: str, fuse: bool,
                report: dict[str, Any]) -> dict[int, dict[str, float]] | None:
    """The CUDA-graph engine; the fused variant is optional: None (and the reason in the report) if it fails."""
    from serving.engines.static_cache import StaticCacheEngine

    try:
        t0 = time.perf_counter()
        graph = StaticCacheEngine(model_dir, max_slots=slots, max_len=1024, dtype=torch.bfloat16, fuse=fuse)
        load_s = time.perf_counter() - t0
        report[f"{name}_build"] = {"load_s": load_s, "capture_s": graph.capture_all(), "graphs": len(graph._graphs)}
        print(name, "build", report[f"{name}_build"], flush=True)
        out = {}
        for b in sizes:
            run_engine(graph, _prompt_ids(graph.tokenizer, b), 8)
            out[b] = run_engine(graph, _prompt_ids(graph.tokenizer, b), args.new_tokens)
            print(name, b, out[b], flush=True)
        del graph
        return out
    except Exception as exc:
        if not fuse:
            raise
        report[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:500]
        print(name, "failed:", report[f"{name}_error"], flush=True)
        return None


def _ratios(sides: dict[str, dict[int, dict[str, float]]], sizes: list[int], ours: list[str]) -> dict:
    ratios = {}
    for b in sizes:
        baselines = {k: v[b]["tokens_per_s"] for k, v in sides.items() if k not in ours and b in v}
        best = max(baselines, key=baselines.get)
        ratios[b] = {"best_baseline": best} | {
            f"{name}_vs_best": sides[name][b]["tokens_per_s"] / baselines[best] for name in ours} | {
            f"{name}_vs_eager_engine": sides[name][b]["tokens_per_s"] / sides["eager-engine"][b]["tokens_per_s"]
            for name in ours}
    return ratios

if __name__ == "__main__":
    raise SystemExit(main())
