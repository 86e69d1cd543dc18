"""Training data as the model sees it: records -> tokenised examples -> packed blocks -> batches.

Why packing: instruction examples here are short (about 50 tokens), so padding each to a fixed length
spends most of the compute on padding. Whole examples are packed into blocks of at most `seq_len`
tokens (first-fit over a seeded random order: blocks come out nearly full and mixed); an example is never
split across blocks.
Inside a block every example's position ids restart at 0. With no 2D attention mask and no KV cache,
transformers (5.x, sdpa/eager/flex) reads a restart in `position_ids` as a sequence boundary and builds a
block-diagonal causal mask, so no token attends across examples and an example's loss in a block equals
its loss when run alone (tested). Targets are the labels shifted by one inside each example, so the last
token of one example never learns to predict the first token of the next.

A batch pads its blocks only to the longest block in that batch; the padding (never more than the slack
left in a block) is masked out of the loss. Everything here is plain numpy/torch: the same functions feed
the Ray workers, the validation loss and the throughput benchmark.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmops.errors import DataError

if TYPE_CHECKING:
    from llmops.params import Params

IGNORE = -100


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL split via the project's strict reader (a bad file raises DataError)."""
    from llmops.data.records import read_jsonl

    return read_jsonl(Path(path)).to_dict("records")


@dataclass(frozen=True)
class Example:
    """One record as tokens: `input_ids` and `labels` (prompt masked with -100), already truncated."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_targets(self) -> int:
        """Tokens the loss is taken on: every labelled token except the first (nothing precedes it)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


@dataclass
class EncodeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # prompt alone fills seq_len: no answer token left to learn from


def encode_records(
    tokenizer, records: Iterable[Mapping[str, Any]], max_len: int
) -> tuple[list[Example], EncodeStats]:
    """Tokenise records with the shared chat formatting, truncating each to `max_len` tokens."""
    from llmops.modeling.prompts import encode_example

    stats = EncodeStats()
    examples: list[Example] = []
    for record in records:
        ids, labels = encode_example(tokenizer, record)
        if len(ids) > max_len:
            stats.truncated += 1
            ids, labels = ids[:max_len], labels[:max_len]
        example = Example(list(ids), list(labels))
        if example.n_targets == 0:
            stats.dropped += 1
            continue
        examples.append(example)
    stats.examples = len(examples)
    return examples, stats


@dataclass(frozen=True)
class Block:
    """Whole examples concatenated: ids, per-example position ids, and next-token targets (-100 = no loss)."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    targets: np.ndarray
    n_examples: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def _targets(labels: Sequence[int]) -> list[int]:
    """Labels shifted left inside one example: position t is scored on token t+1; the last on nothing."""
    return [*labels[1:], IGNORE]


def make_block(examples: Sequence[Example]) -> Block:
    ids: list[int] = []
    pos: list[int] = []
    tgt: list[int] = []
    for ex in examples:
        ids.extend(ex.input_ids)
        pos.extend(range(len(ex.input_ids)))
        tgt.extend(_targets(ex.labels))
    return Block(
        input_ids=np.asarray(ids, dtype=np.int64),
        position_ids=np.asarray(pos, dtype=np.int64),
        targets=np.asarray(tgt, dtype=np.int64),
        n_examples=len(examples),
    )


def pack_groups(lengths: Sequence[int], seq_len: int, seed: int = 0) -> list[list[int]]:
    """First-fit bin packing of example indices into bins of `seq_len` tokens, over a seeded random order.

    Random order rather than first-fit *decreasing*: sorting by length groups examples of the same
    template (lengths correlate with the instruction kind) into the same blocks, which makes each global
    batch less diverse and measurably hurt the eval loss of short runs, while random first-fit fills blocks
    about as well on this data (benchmarks/README.md, measurements cited by the code). Deterministic for a
    seed; each bin keeps its examples in ascending index order.
    """
    order = list(range(len(lengths)))
    np.random.default_rng(seed).shuffle(order)
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens > seq_len {seq_len}; truncate first")
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(seq_len - n)
    return [sorted(b) for b in bins]


def pack_examples(examples: Sequence[Example], seq_len: int, seed: int = 0) -> list[Block]:
    """Pack whole examples into blocks of at most `seq_len` tokens (see module docstring)."""
    groups = pack_groups([len(ex.input_ids) for ex in examples], seq_len, seed)
    return [make_block([examples[i] for i in g]) for g in groups]


def single_blocks(examples: Sequence[Example]) -> list[Block]:
    """One example per block: the unpacked reference that packing must agree with."""
    return [make_block([ex]) for ex in examples]


def collate(blocks: Sequence[Block], pad_id: int):
    """Stack blocks into a batch padded to the longest one; padding is its own segment with no targets."""
    import torch

    width = max(len(b) for b in blocks)
    n = len(blocks)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    for row, block in enumerate(blocks):
        k = len(block)
        input_ids[row, :k] = torch.as_tensor(np.array(block.input_ids))
        targets[row, :k] = torch.as_tensor(np.array(block.targets))
        position_ids[row, :k] = torch.as_tensor(np.array(block.position_ids))
        position_ids[row, k:] = torch.arange(width - k)
    return {"input_ids": input_ids, "position_ids": position_ids, "targets": targets}


def loss_sum(model, batch) -> tuple[Any, int]:
    """Summed next-token cross-entropy over the batch's targets, and how many targets there were.

    Logits are projected only at target positions (`logits_to_keep` as a boolean mask): the vocabulary
    projection is a large share of a small model's compute, and prompt/padding positions need none.
    `use_cache=False` and no attention mask keep transformers' packed-sequence masking on.
    """
    import torch

    keep = batch["targets"] != IGNORE
    n = int(keep.sum())
    if n == 0:
        # Still run the model so collective-communicating wrappers (FSDP) stay in step across ranks.
        out = model(input_ids=batch["input_ids"][:, :1], position_ids=batch["position_ids"][:, :1], use_cache=False)
        return out.logits.sum() * 0.0, 0
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        use_cache=False,
        logits_to_keep=keep,
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
    return torch.nn.functional.cross_entropy(logits, batch["targets"][keep], reduction="sum"), n


class BlockStream:
    """The global order of training blocks: epoch e is a seeded permutation of all blocks, epochs concatenated.

    Optimizer step s takes the next `global_batch` positions of the stream; rank r of `world` takes its
    contiguous `global_batch // world` of them. The order does not depend on the number of workers, so a
    run on 1 worker and one on 2 (same global batch) see exactly the same blocks at every step, and a
    resumed run continues from the step number alone.
    """

    def __init__(self, n_blocks: int, seed: int) -> None:
        if n_blocks <= 0:
            raise ValueError("no training blocks")
        self.n_blocks = n_blocks
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
        return self._perms[epoch]

    def at(self, position: int) -> int:
        epoch, index = divmod(position, self.n_blocks)
        return int(self._perm(epoch)[index])

    def step_indices(self, step: int, global_batch: int) -> list[int]:
        """Block indices of 0-based optimizer step `step`, in rank order."""
        start = step * global_batch
        return [self.at(p) for p in range(start, start + global_batch)]

    def rank_indices(self, step: int, global_batch: int, rank: int, world: int) -> list[int]:
        per_rank = global_batch // world
        return self.step_indices(step, global_batch)[rank * per_rank : (rank + 1) * per_rank]

    def epoch_of(self, step: int, global_batch: int) -> float:
        return step * global_batch / self.n_blocks


@dataclass
class PreparedData:
    """Packed training and validation blocks, the pad id collate uses, and packing statistics."""

    blocks: list
    val_blocks: list
    pad_id: int
    stats: dict[str, float]


def prepare_data(params: Params, tokenizer, train_path: Path, validation_path: Path) -> PreparedData:
    """Records -> encoded examples -> packed blocks for training and validation (driver side)."""
    tp = params.train
    train_records = read_records(train_path)
    val_records = read_records(validation_path)
    if tp.max_train_examples > 0:
        train_records = train_records[: tp.max_train_examples]
    if tp.max_val_examples > 0:
        val_records = val_records[: tp.max_val_examples]
    examples, enc = encode_records(tokenizer, train_records, tp.seq_len)
    val_examples, val_enc = encode_records(tokenizer, val_records, tp.seq_len)
    if not examples:
        raise DataError(f"no usable training example in {train_path} (all prompts exceed seq_len {tp.seq_len})",
                        "raise train.seq_len or shorten the prompts")
    if not val_examples:
        raise DataError(f"no usable validation example in {validation_path}", "check the validation split")
    blocks = pack_examples(examples, tp.seq_len, seed=tp.seed)
    val_blocks = pack_examples(val_examples, tp.seq_len)
    real = sum(len(b) for b in blocks)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stats = {
        "examples": enc.examples,
        "examples_truncated": enc.truncated,
        "examples_dropped": enc.dropped,
        "val_examples": val_enc.examples,
        "blocks": len(blocks),
        "val_blocks": len(val_blocks),
        "pack_fill": real / (len(blocks) * tp.seq_len),
        "tokens_per_example": real / len(examples),
    }
    return PreparedData(blocks, val_blocks, int(pad_id), stats)
