"""DPO on preference pairs, in the same packed LoRA path as SFT: records -> pairs -> packed blocks -> loss.

A preference record is an instruction record whose answer comes twice: `instruction`, `input` (optional),
`chosen`, `rejected` (other keys, e.g. `request_ids`, `source`, `model_version` from `llmops log export
--kind preference`, are carried along and ignored). Each side is encoded exactly as an SFT record whose
`output` is that answer (llmops.modeling.prompts.encode_example: the family's chat template, loss on the
answer and its end-of-turn only), so DPO sees the same text SFT and serving see.

Packing: a pair's two sequences stay adjacent in one block (chosen, then rejected), so a block of k pairs
holds 2k examples whose position ids restart at 0; the packed attention keeps them apart. A sequence's
log-probability is the sum of its answer tokens' log-probabilities (TRL's `DPOTrainer`, loss_type sigmoid).

Loss (Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) averaged over pairs,
plus optionally `sft_weight` x the token-mean NLL of the chosen answers (TRL's loss_type ["sigmoid", "sft"]).
The reference is the same model with its LoRA adapter disabled (peft `disable_adapter()`): the base the
adapter trains on, with no second copy of the weights. tests/unit/test_train_preference.py checks loss and
gradients against TRL's DPOTrainer on the same batch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmops.errors import DataError
from llmops.training.data import IGNORE, Block, EncodeStats, Example, PreparedData, make_block, pack_groups

if TYPE_CHECKING:
    from llmops.params import Params

REQUIRED = ("instruction", "chosen", "rejected")


def read_preferences(path: Path) -> list[dict[str, Any]]:
    """Preference records of a JSONL file; a line that is not such a record is a DataError naming the line, and
    so are pairs from requests a person had erased (llmops/data/erasures.py: checked before anything reads them,
    e.g. the retrain's DPO stage before it builds its start model)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such preference file", "pass a JSONL of {instruction, input, chosen, "
                        "rejected} records (`llmops log export --kind preference`)")
    from llmops.data.erasures import check_training_data
    from llmops.settings import get_settings

    settings = get_settings()
    check_training_data(settings.state_dir, settings.project_dir, {"preference": path})
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n} is not valid JSON ({exc.msg})", "one JSON object per line") from None
        if not isinstance(obj, dict):
            obj = {}
        bad = [k for k in REQUIRED if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if not isinstance(obj.get("input") or "", str):
            bad.append("input")
        if bad:
            raise DataError(f"{path}: line {n} is not a preference record (missing, empty or not text: "
                            f"{', '.join(bad)})", "each line needs non-empty string instruction, chosen and "
                            "rejected (input optional)")
        records.append(obj)
    if not records:
        raise DataError(f"{path}: no preference records", "export or build some pairs first")
    return records


@dataclass(frozen=True)
class Pair:
    chosen: Example
    rejected: Example


def encode_pairs(tokenizer, records: Iterable[Mapping[str, Any]], max_len: int) -> tuple[list[Pair], EncodeStats]:
    """Both answers of each record as SFT examples (prompt masked), each truncated to `max_len` tokens; a pair
    whose either side keeps no answer token is dropped."""
    from llmops.modeling.prompts import encode_example

    stats = EncodeStats()
    pairs: list[Pair] = []
    for record in records:
        sides = []
        for key in ("chosen", "rejected"):
            ids, labels = encode_example(tokenizer, {**record, "output": record[key]})
            if len(ids) > max_len:
                stats.truncated += 1
                ids, labels = ids[:max_len], labels[:max_len]
            sides.append(Example(list(ids), list(labels)))
        if sides[0].n_targets == 0 or sides[1].n_targets == 0:
            stats.dropped += 1
            continue
        pairs.append(Pair(*sides))
    stats.examples = len(pairs)
    return pairs, stats


def pack_pairs(pairs: Sequence[Pair], seq_len: int, seed: int = 0) -> list[Block]:
    """Whole pairs into blocks of at most `seq_len` tokens (first-fit, seeded: data.pack_groups); in a block,
    example 2i is pair i's chosen answer and 2i+1 its rejected one."""
    lengths = [len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs]
    groups = pack_groups(lengths, seq_len, seed)
    return [make_block([ex for i in g for ex in (pairs[i].chosen, pairs[i].rejected)]) for g in groups]


def _sequence_index(position_ids: np.ndarray) -> np.ndarray:
    """Per token: which example of its block it belongs to (0-based; position ids restart per example)."""
    return np.cumsum(np.asarray(position_ids) == 0) - 1


def pair_counts(block: Block) -> tuple[int, int]:
    """(pairs, chosen answer tokens) of a block: the denominators of the DPO and SFT terms."""
    chosen = (_sequence_index(block.position_ids) % 2 == 0) & (np.asarray(block.targets) != IGNORE)
    return block.n_examples // 2, int(chosen.sum())


def collate_pairs(blocks: Sequence[Block], pad_id: int) -> dict[str, Any]:
    """`data.collate` plus `sequence`: per token, the batch-wide index of its sequence (-1 on padding)."""
    import torch

    from llmops.training.data import collate

    batch = collate(blocks, pad_id)
    sequence = torch.full_like(batch["input_ids"], -1)
    offset = 0
    for row, block in enumerate(blocks):
        sequence[row, : len(block)] = torch.as_tensor(_sequence_index(block.position_ids)) + offset
        offset += block.n_examples
    batch["sequence"] = sequence
    return batch


def sequence_logps(model, batch: Mapping[str, Any]):
    """(summed answer-token log-probs per sequence (n_sequences,), per-target-token log-probs, their sequence).

    Logits only at target positions (`logits_to_keep` mask), as `data.loss_sum` does.
    """
    import torch

    keep = batch["targets"] != IGNORE
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                logits_to_keep=keep)
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
    token_logps = -torch.nn.functional.cross_entropy(logits, batch["targets"][keep], reduction="none")
    seq = batch["sequence"][keep]
    n_seq = int(batch["sequence"].max().item()) + 1
    sums = torch.zeros(n_seq, dtype=token_logps.dtype, device=token_logps.device).index_add(0, seq, token_logps)
    return sums, token_logps, seq


@contextlib.contextmanager
def adapter_disabled(model) -> Iterator[None]:
    """The base model inside the block: the PEFT model (possibly wrapped by DDP) with its LoRA layers off."""
    from llmops.training.model import unwrap

    with unwrap(model).disable_adapter():
        yield


def reference_logps(model, batch: Mapping[str, Any]):
    """Per-sequence log-probs under the reference policy: the same weights with the adapter disabled."""
    import torch

    with torch.no_grad(), adapter_disabled(model):
        return sequence_logps(model, batch)[0]


@dataclass
class PreferenceLoss:
    """Sums over this batch's pairs (divide by the global counts): DPO loss, chosen NLL, rewards."""

    dpo_sum: Any  # tensor with grad
    nll_sum: Any  # tensor with grad: summed NLL of the chosen answers' tokens
    pairs: int
    chosen_tokens: int
    margins: Any  # beta * ((pi_c - ref_c) - (pi_r - ref_r)) per pair, detached
    logp_margins: Any  # pi_c - pi_r per pair (the model's own preference), detached


def preference_loss(model, batch: Mapping[str, Any], beta: float, reference=None) -> PreferenceLoss:
    """DPO terms of a collated pair batch; `reference` = precomputed reference log-probs, else computed here."""
    import torch

    ref = reference_logps(model, batch) if reference is None else reference
    policy, token_logps, seq = sequence_logps(model, batch)
    ratio = policy - ref
    margins = beta * (ratio[0::2] - ratio[1::2])
    chosen = seq % 2 == 0
    return PreferenceLoss(
        dpo_sum=-torch.nn.functional.logsigmoid(margins).sum(),
        nll_sum=-token_logps[chosen].sum(),
        pairs=int(margins.numel()),
        chosen_tokens=int(chosen.sum()),
        margins=margins.detach(),
        logp_margins=(policy[0::2] - policy[1::2]).detach(),
    )


def prepare_preference_data(params: Params, tokenizer, train_path: Path, validation_path: Path) -> PreparedData:
    """Preference records -> pairs -> packed blocks for training and validation (driver side)."""
    tp = params.train
    train_records = read_preferences(train_path)
    val_records = read_preferences(validation_path)
    if tp.max_train_examples > 0:
        train_records = train_records[: tp.max_train_examples]
    if tp.max_val_examples > 0:
        val_records = val_records[: tp.max_val_examples]
    per_side = tp.seq_len // 2  # a pair's two sequences always fit one block
    pairs, enc = encode_pairs(tokenizer, train_records, per_side)
    val_pairs, val_enc = encode_pairs(tokenizer, val_records, per_side)
    if not pairs or not val_pairs:
        which = train_path if not pairs else validation_path
        raise DataError(f"no usable preference pair in {which} (prompts exceed train.seq_len/2 = {per_side})",
                        "raise train.seq_len or shorten the prompts")
    blocks = pack_pairs(pairs, tp.seq_len, seed=tp.seed)
    val_blocks = pack_pairs(val_pairs, tp.seq_len)
    real = sum(len(b) for b in blocks)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stats = {
        "examples": enc.examples,  # pairs
        "examples_truncated": enc.truncated,  # sequences
        "examples_dropped": enc.dropped,
        "val_examples": val_enc.examples,
        "blocks": len(blocks),
        "val_blocks": len(val_blocks),
        "pack_fill": real / (len(blocks) * tp.seq_len),
        "tokens_per_example": real / len(pairs),
    }
    return PreparedData(blocks, val_blocks, int(pad_id), stats)


def score_pairs(model, tokenizer, records: Sequence[Mapping[str, Any]], seq_len: int,
                batch_size: int = 8) -> dict[str, Any]:
    """How a (merged or plain) model ranks held-out pairs: per-pair log-probs of both answers, the share of
    pairs whose chosen answer it finds more likely (`preference_accuracy`) and the mean log-prob margin."""
    import torch

    pairs, _ = encode_pairs(tokenizer, records, seq_len // 2)
    if not pairs:
        return {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    blocks = pack_pairs(pairs, seq_len)
    logps = []
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            logps.append(sequence_logps(model, collate_pairs(blocks[i : i + batch_size], pad_id))[0].double().cpu())
    seq = torch.cat(logps)
    chosen, rejected = seq[0::2], seq[1::2]
    return {"preference_accuracy": float((chosen > rejected).double().mean()),
            "preference_logp_margin": float((chosen - rejected).mean()),
            "preference_pairs": len(pairs), "chosen_logps": chosen.tolist(), "rejected_logps": rejected.tolist()}
