"""Training step time: ours (Ray Train, packing, answer-only logits, LoRA) vs the baselines a user would pick.

Sides, in one run, one after the other, on the same machine (see `benchmarks/README.md`):
- `ours`: `components.train.logic.train_adapter`, exactly as `make run` runs it (params.yaml: Ray Train workers,
  FSDP2, whole examples packed into `train.seq_len` blocks, logits only at answer positions, bf16 autocast);
- `pad`: HF `Trainer`, dynamic padding (`DataCollatorForSeq2Seq`, pad to longest) + group-by-length sampling;
- `flatten`: HF `Trainer` + `DataCollatorWithFlattening` (padding-free, position-id boundaries);
- `trl`: TRL `SFTTrainer(packing=True)` (BFD packing, padding-free).
(see `benchmarks/hf_baselines.py` for how each baseline is built).

Same for every side: the first E tokenised training examples (chat template, loss on the answer only), the
LoRA config and init seed, AdamW, `lr_factor` schedule over `--steps + 1` optimizer steps, gradient clipping,
the precision `train.precision` resolves to on this host (llmops.precision; bf16 autocast where the CPU has native
bf16). The first step of every side is warm-up and excluded; step time is the mean over the other
`--steps`. Tokens per optimizer step are matched as closely as each side allows and printed.

FLOPs are counted per step from the layout each side really ran (`benchmarks/flops.py`: frozen base forward +
activation-gradient backward, LoRA terms, only the logits computed, the attention pairs the kernel scores) and
shown as a fraction of this machine's bf16 `torch.matmul` peak measured in the same run. The eval loss of every
adapter is measured the same way (fp32, token-mean on the answers of the first `train.max_val_examples`
validation records). `--profile` adds a torch.profiler table of our step (one process, same functions).

    .venv/bin/python -m benchmarks.train_throughput [--steps N] [--sides ours,pad,flatten,trl] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from llmops.training.flops import FORMULA, MicroBatch, ModelShape, micro_batch, segment_lengths, step_flops  # noqa: E402

SIDES = ("ours", "pad", "flatten", "trl")
LABELS = {
    "ours": "ours (Ray Train, packed, answer-only logits)",
    "pad": "HF Trainer, pad to longest + group_by_length",
    "flatten": "HF Trainer + DataCollatorWithFlattening",
    "trl": "TRL SFTTrainer, packing=True (BFD, padding-free)",
}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class CpuPressure:
    """Share of wall time some task waited for a CPU (Linux PSI) over a phase: 0 = no contention."""

    def __init__(self) -> None:
        self._start = (self._stall_us(), time.perf_counter())

    @staticmethod
    def _stall_us() -> float | None:
        try:
            return float(Path("/proc/pressure/cpu").read_text().splitlines()[0].rsplit("total=", 1)[1])
        except (OSError, IndexError, ValueError):
            return None

    def share(self) -> float | None:
        stall0, t0 = self._start
        stall1 = self._stall_us()
        if stall0 is None or stall1 is None:
            return None
        return (stall1 - stall0) / 1e6 / (time.perf_counter() - t0)


def matmul_peak(size: int = 2048, reps: int = 8) -> float:
    """Best bf16 FLOP/s of a size^3 torch.matmul over `reps` runs, all torch threads (this process's default)."""
    import torch

    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    for _ in range(2):
        torch.matmul(a, b)
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def choose_examples(examples: list, seq_len: int, n_blocks: int, seed: int) -> int:
    """Largest E such that our packing of the first E examples gives at most `n_blocks` blocks."""
    from llmops.training.data import pack_examples

    lo, hi = 1, len(examples)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(pack_examples(examples[:mid], seq_len, seed)) <= n_blocks:
            lo = mid
        else:
            hi = mid - 1
    return lo


def our_layouts(params, tokenizer, train_path: Path, val_path: Path, steps: int) -> list[list[MicroBatch]]:
    """The micro-batches each rank of ours ran at every step, rebuilt with the workers' own data functions."""
    from llmops.training.data import BlockStream, prepare_data

    tp = params.train
    data = prepare_data(params, tokenizer, train_path, val_path)
    stream = BlockStream(len(data.blocks), tp.seed)
    out = []
    for step in range(steps):
        per_rank = []
        for rank in range(tp.num_workers):
            blocks = [data.blocks[i] for i in stream.rank_indices(step, tp.batch_size * tp.num_workers, rank,
                                                                  tp.num_workers)]
            width = max(len(b) for b in blocks)
            rows = [segment_lengths(b.position_ids.tolist()) for b in blocks]
            per_rank.append(micro_batch(rows, width, sum(b.n_targets for b in blocks), per_example=True))
        out.append(per_rank)
    return out


def eval_loss(base_dir: Path, adapter_dir: Path, tokenizer, records: list[dict], seq_len: int) -> float:
    """Token-mean loss on the answers of `records`: the saved adapter on a fresh fp32 base, no autocast, one way
    for every side."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmops.training.data import collate, encode_records, loss_sum, pack_examples

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)

    examples, _ = encode_records(tokenizer, records, seq_len)
    blocks = pack_examples(examples, seq_len)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(blocks), 4):
            loss, n = loss_sum(model, collate(blocks[start : start + 4], tokenizer.pad_token_id))
            total, count = total + loss.item(), count + n
    return total / count


def run_ours(params, base_dir: Path, train_path: Path, val_path: Path, out_dir: Path, tokenizer) -> dict[str, Any]:
    from components.train.logic import train_adapter
    from llmops.settings import get_settings

    started = time.perf_counter()
    result = train_adapter(get_settings(), params, train_path=train_path, validation_path=val_path,
                           base_model_dir=base_dir, out_dir=out_dir)
    wall = time.perf_counter() - started
    return {
        "step_seconds": [row["seconds"] for row in result.history],
        "batches": our_layouts(params, tokenizer, train_path, val_path, params.train.max_steps),
        "train_loss": result.metrics["train_loss"],
        "adapter_dir": out_dir,
        "workers": f"{result.metrics['num_workers']} {result.metrics['strategy']} worker(s)",
        "pack_fill": result.metrics["pack_fill"],
        "wall_seconds": wall,
    }


def summarise(side: str, raw: dict[str, Any], shape: ModelShape, peak: float) -> dict[str, Any]:
    """Mean step time, tokens/s and FLOP fraction over the measured steps (the first step excluded)."""
    seconds = raw["step_seconds"][1:]
    batches = raw["batches"][1:]
    if not seconds or len(seconds) != len(batches):
        raise RuntimeError(f"{side}: {len(raw['step_seconds'])} step times for {len(raw['batches'])} steps")
    flops = [step_flops(shape, b) for b in batches]
    tokens = [sum(mb.real_tokens for mb in b) for b in batches]
    padded = [sum(mb.padded_tokens for mb in b) for b in batches]
    total_s = sum(seconds)
    flops_per_s = sum(f["total"] for f in flops) / total_s
    terms = {k: statistics.mean(f[k] for f in flops) for k in ("base_and_lora", "lm_head", "attention", "total")}
    return {
        "label": LABELS[side],
        "measured_steps": len(seconds),
        "step_seconds_mean": total_s / len(seconds),
        "step_seconds": seconds,
        "warmup_seconds": raw["step_seconds"][0],
        "tokens_per_step": statistics.mean(tokens),
        "padded_tokens_per_step": statistics.mean(padded),
        "tokens_per_s": sum(tokens) / total_s,
        "flops_per_step": terms,
        "flops_per_s": flops_per_s,
        "peak_fraction": flops_per_s / peak,
        "train_loss": raw["train_loss"],
        "wall_seconds": raw["wall_seconds"],
        **{k: raw[k] for k in ("micro_batch", "grad_accum", "workers", "pack_fill", "cross_attention_max_diff",
                               "loadavg_before", "loadavg_after", "cpu_pressure") if k in raw},
    }


def profile_ours(params, base_dir: Path, tokenizer, train_path: Path, val_path: Path, top: int = 15) -> str:
    """torch.profiler over 2 steps of one worker's share of our step (its 2 blocks, 1 thread as a Ray worker has)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from llmops.precision import autocast
    from llmops.training.attention import register as packed_attention
    from llmops.training.data import BlockStream, collate, loss_sum, prepare_data
    from llmops.training.model import build_lora_model

    tp = params.train
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // tp.num_workers))
    data = prepare_data(params, tokenizer, train_path, val_path)
    model = build_lora_model(base_dir, params.lora.model_dump(), tp.seed, torch.device("cpu"), packed_attention())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tp.lr, weight_decay=0.0)
    stream = BlockStream(len(data.blocks), tp.seed)
    model.train()

    def one(step: int) -> None:
        batch = collate([data.blocks[i] for i in stream.step_indices(step, tp.batch_size)], data.pad_id)
        with autocast("cpu", tp.precision):
            loss, n = loss_sum(model, batch)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    one(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one(1)
        one(2)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def argv_sides_default(args: argparse.Namespace) -> bool:
    return args.sides == ",".join(SIDES)


def _lora_targets(config, spec) -> list[str]:
    """`lora.target_modules` as names (`auto` resolved on a weightless copy of the model, as training does)."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmops.modeling.families import resolve_target_modules

    with torch.device("meta"):
        return resolve_target_modules(AutoModelForCausalLM.from_config(config), spec)


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps per side (+1 warm-up)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {','.join(SIDES)}")
    parser.add_argument("--model", choices=["tiny", "base"], default="base",
                        help="base: the real SmolLM2-135M (default); tiny: a random tiny model, smoke runs only")
    parser.add_argument("--train", type=Path, default=REPO / "data/splits/train.jsonl")
    parser.add_argument("--validation", type=Path, default=REPO / "data/splits/validation.jsonl")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="params.yaml override for every side, e.g. train.strategy=ddp (repeatable)")
    parser.add_argument("--profile", action="store_true", help="also profile 2 steps of ours (top ops by self CPU)")
    parser.add_argument("--profile-only", action="store_true", help="only the profile of ours, no sides")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in SIDES]
    if unknown or not sides or args.steps < 1:
        parser.error(f"--sides takes {','.join(SIDES)} (got {unknown or 'none'}); --steps must be >= 1")
    return args, sides, parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, sides, parser = _parse_args(argv)

    json_fd = None
    if args.json:  # Ray workers and the Trainers print to fd 1: keep it for the JSON alone
        sys.stdout.flush()
        json_fd = os.dup(1)
        os.dup2(2, 1)
    if "trl" in sides:
        import importlib.util

        if importlib.util.find_spec("trl") is None and argv_sides_default(args):
            sides.remove("trl")
            print("[trl] skipped: TRL is not installed (.venv/bin/pip install -c requirements/constraints.txt "
                  "-e '.[bench]')", file=sys.stderr)
        elif importlib.util.find_spec("trl") is None:
            parser.error("the trl side needs TRL: .venv/bin/pip install -c requirements/constraints.txt -e '.[bench]' "
                         "(or leave it out: --sides ours,pad,flatten)")
    work = Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    os.environ["LLMOPS_STATE_DIR"] = str(work / "state")  # MLflow/Ray state of the benchmark: not the user's
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))

    import torch

    plan = _plan(args, work, log)
    params, tp = plan.params, plan.params.train
    if args.profile_only:
        table = profile_ours(params, plan.base_dir, plan.tokenizer, args.train, args.validation)
        print(table)
        return {"profile_ours": table}
    # The machine may be shared: the peak is measured before every side and the best one is the reference.
    peaks = [matmul_peak()]
    peak = peaks[0]
    log(f"model {args.model}, bf16 matmul peak {peak / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads); "
        f"{plan.n_examples} examples, {plan.total_steps} steps (1 warm-up); sides {','.join(sides)}")
    raw = _run_sides(plan, sides, peaks, args, work, log)
    peak, shape = max(peaks), plan.shape
    results = {side: {**summarise(side, out, shape, peak), "eval_loss": out["eval_loss"]} for side, out in raw.items()}
    ratios = _ratios(results)
    report: dict[str, Any] = {
        "model": args.model, "overrides": args.set, "precision": tp.precision, "host": plan.host,
        "threads": torch.get_num_threads(),
        "measured_steps": args.steps, "warmup_steps_excluded": 1, "examples": plan.n_examples,
        "val_examples": len(plan.val_records), "matmul_peak_flops_per_s": peak, "flops_formula": FORMULA,
        "matmul_peaks_measured": peaks,
        "model_shape": {"n_linear": shape.n_linear, "n_lora": shape.n_lora, "per_token": shape.per_token,
                        "per_logit": shape.per_logit, "per_pair": shape.per_pair},
        "sides": results, "ratios_ours_over": ratios,
    }
    if args.profile:
        report["profile_ours"] = profile_ours(params, plan.base_dir, plan.tokenizer, args.train, args.validation)
    if json_fd is not None:
        sys.stdout.flush()
        os.dup2(json_fd, 1)
        print(json.dumps(report, indent=2, default=str), flush=True)
    else:
        print(render(report))
    return report


@dataclasses.dataclass
class Plan:
    """What every side trains on: the resolved params, the same examples and step count, and the model shape
    the FLOP counts use."""

    params: Any
    base_dir: Path
    tokenizer: Any
    host: dict[str, Any]
    examples_all: list
    examples: list
    n_examples: int
    global_batch: int
    micro: int
    accum: int
    total_steps: int
    val_records: list
    shape: ModelShape


def _plan(args: argparse.Namespace, work: Path, log) -> Plan:
    from transformers import AutoConfig, AutoTokenizer

    from llmops import host
    from llmops.modeling.tiny import build_tiny_model
    from llmops.precision import probe_shape, resolve
    from llmops.settings import get_settings
    from llmops.training.data import encode_records, read_records

    settings = get_settings()
    settings.ensure_state_dir()
    base_dir = settings.project_dir / ".llmops/models/smollm2-135m-instruct"
    if not (base_dir / "config.json").is_file():
        raise SystemExit(f"base model not found at {base_dir}: run `llmops model pull` (or `make model`)")
    if args.model == "tiny":
        base_dir = build_tiny_model(work / "tiny", tokenizer_dir=base_dir)
    total_steps = args.steps + 1
    tp = settings.params([*args.set, f"train.max_steps={total_steps}"]).train
    host_fp = host.for_benchmark()
    # every side trains in the precision `auto` (or the --set value) resolves to on this host
    choice = resolve(tp.precision, "cpu", settings.state_dir, probe_shape(tp.batch_size, tp.seq_len, base_dir))
    log(f"{choice.line()}")
    args.set = [*args.set, f"train.precision={choice.precision}"]
    tp = settings.params([*args.set, f"train.max_steps={total_steps}"]).train
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    examples_all, _ = encode_records(tokenizer, read_records(args.train), tp.seq_len)
    global_batch = tp.batch_size * tp.num_workers
    n_examples = choose_examples(examples_all, tp.seq_len, total_steps * global_batch, tp.seed)
    # The first E records (ours reads records; no record of the split is dropped at seq_len 512).
    params = settings.params([*args.set, f"train.max_steps={total_steps}", f"train.max_train_examples={n_examples}"])
    config = AutoConfig.from_pretrained(base_dir)
    shape = ModelShape.from_config(config, params.lora.r, _lora_targets(config, params.lora.target_modules))
    # Baselines without packing: `global_batch` micro-batches per step (ours: that many blocks), each of about
    # E / (steps * global_batch) examples, so a step sees about the same examples and tokens as ours.
    return Plan(params=params, base_dir=base_dir, tokenizer=tokenizer, host=host_fp, examples_all=examples_all,
                examples=examples_all[:n_examples], n_examples=n_examples, global_batch=global_batch,
                micro=max(1, round(n_examples / (total_steps * global_batch))), accum=global_batch,
                total_steps=total_steps, val_records=read_records(args.validation)[: tp.max_val_examples or None],
                shape=shape)


def _run_sides(plan: Plan, sides: list[str], peaks: list[float], args: argparse.Namespace, work: Path,
               log) -> dict[str, dict[str, Any]]:
    """Each side in turn, the matmul peak re-measured before it (the machine may be shared: the best peak is the
    reference); partial results are written after every side."""
    from benchmarks import hf_baselines

    params, base_dir, tokenizer, tp = plan.params, plan.base_dir, plan.tokenizer, plan.params.train
    raw: dict[str, dict[str, Any]] = {}
    for side in sides:
        before, pressure = loadavg(), CpuPressure()
        peaks.append(matmul_peak())
        peak = max(peaks)
        log(f"[{side}] start, loadavg {before}, bf16 matmul {peaks[-1] / 1e9:.0f} GFLOP/s")
        if side == "ours":
            out = run_ours(params, base_dir, args.train, args.validation, work / "ours", tokenizer)
        else:
            kwargs = ({"micro": 1, "accum": plan.global_batch} if side == "trl"
                      else {"micro": plan.micro, "accum": plan.accum})
            side_examples = plan.examples_all[: plan.n_examples if side == "trl"
                                              else plan.micro * plan.accum * plan.total_steps]
            out = hf_baselines.run_side(side, base_dir=base_dir, tokenizer=tokenizer,
                                        lora=params.lora.model_dump(), tp=tp, examples=side_examples,
                                        steps=plan.total_steps, out_dir=work, **kwargs)
        out.update(loadavg_before=before, loadavg_after=loadavg(), cpu_pressure=pressure.share())
        if side in ("flatten", "trl"):
            out["cross_attention_max_diff"] = hf_baselines.cross_attention_probe(side, base_dir, tokenizer,
                                                                                 plan.examples)
        out["eval_loss"] = eval_loss(base_dir, out.pop("adapter_dir"), tokenizer, plan.val_records, tp.seq_len)
        raw[side] = out
        log(f"[{side}] done in {out['wall_seconds']:.0f} s, eval loss {out['eval_loss']:.4f}, loadavg {loadavg()}")
        partial = {s: {**summarise(s, o, plan.shape, peak), "eval_loss": o["eval_loss"]} for s, o in raw.items()}
        (work / "partial.json").write_text(json.dumps({"matmul_peak_flops_per_s": peak, "sides": partial},
                                                      indent=2, default=str))
        log(f"[{side}] results so far: {work / 'partial.json'}")
    return raw


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    if "ours" not in results:
        return {}
    o = results["ours"]
    return {side: {"step_time": r["step_seconds_mean"] / o["step_seconds_mean"],
                   "tokens_per_s": o["tokens_per_s"] / r["tokens_per_s"],
                   "eval_loss_delta": o["eval_loss"] - r["eval_loss"]}
            for side, r in results.items() if side != "ours"}


def render(report: dict[str, Any]) -> str:
    peak = report["matmul_peak_flops_per_s"]
    peaks = ", ".join(f"{p / 1e9:.0f}" for p in report.get("matmul_peaks_measured", [peak]))
    lines = [f"{report['model']} model, {report['precision']}, {report['threads']} threads, {report['examples']} "
             f"examples, {report['measured_steps']} measured steps (+1 warm-up each); bf16 matmul peak "
             f"{peak / 1e9:.0f} GFLOP/s (best of {peaks}"
             f" measured at start and before each side); overrides {report['overrides'] or 'none (params.yaml)'}",
             f"FLOPs: {report['flops_formula']}", ""]
    head = (f"{'side':8} {'step s':>7} {'tok/step':>8} {'pad/step':>8} {'tok/s':>7} {'GFLOP/step':>10} "
            f"{'GFLOP/s':>8} {'of peak':>7} {'eval loss':>9} {'ours x':>7}  loadavg before -> after")
    lines += [head, "-" * len(head)]
    for side, r in report["sides"].items():
        ratio = report["ratios_ours_over"].get(side, {}).get("step_time")
        lines.append(
            f"{side:8} {r['step_seconds_mean']:7.2f} {r['tokens_per_step']:8.0f} {r['padded_tokens_per_step']:8.0f} "
            f"{r['tokens_per_s']:7.0f} {r['flops_per_step']['total'] / 1e9:10.1f} {r['flops_per_s'] / 1e9:8.1f} "
            f"{r['peak_fraction']:7.1%} {r['eval_loss']:9.4f} {(f'{ratio:.2f}x' if ratio else '-'):>7}  "
            f"{r['loadavg_before']} -> {r['loadavg_after']}")
    lines.append("")
    for side, r in report["sides"].items():
        extra = f", cross-attention probe max |dlogit| {r['cross_attention_max_diff']:.2e}" \
            if "cross_attention_max_diff" in r else ""
        pressure = "n/a" if r["cpu_pressure"] is None else f"{r['cpu_pressure']:.2f}"
        lines.append(f"{side:8} {r['label']}; CPU pressure {pressure}{extra}")
    for side, q in report["ratios_ours_over"].items():
        lines.append(f"ours vs {side}: step time {q['step_time']:.2f}x, tokens/s {q['tokens_per_s']:.2f}x, "
                     f"eval loss ours - {side} {q['eval_loss_delta']:+.4f}")
    if "profile_ours" in report:
        lines += ["", "profile of one worker of ours (2 steps):", report["profile_ours"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
