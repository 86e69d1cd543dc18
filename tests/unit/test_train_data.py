"""Formatting, packing and the block stream of the train step (fast: tiny model, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmops.errors import DataError
from llmops.training.data import (
    IGNORE,
    BlockStream,
    Example,
    collate,
    encode_records,
    loss_sum,
    make_block,
    pack_examples,
    pack_groups,
    read_records,
    single_blocks,
)

RECORDS = [
    {"id": str(i), "instruction": f"Name {i + 1} colours." * (1 + i % 3), "input": "" if i % 2 else "in a list",
     "output": " ".join(["red", "green", "blue", "cyan"][: 1 + i % 4]), "source": "t"}
    for i in range(9)
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_labels_mask_the_prompt_and_keep_the_answer(tiny):
    from llmops.modeling.prompts import format_prompt, format_target

    _, tokenizer = tiny
    examples, stats = encode_records(tokenizer, RECORDS[:3], max_len=512)
    assert stats.examples == 3 and stats.truncated == 0 and stats.dropped == 0
    for record, ex in zip(RECORDS, examples, strict=False):
        n_prompt = len(tokenizer(format_prompt(tokenizer, record), add_special_tokens=False)["input_ids"])
        assert all(label == IGNORE for label in ex.labels[:n_prompt])
        answer = [t for t in ex.labels if t != IGNORE]
        assert tokenizer.decode(answer) == format_target(tokenizer, record)


def test_truncation_and_dropping(tiny):
    _, tokenizer = tiny
    long = {**RECORDS[0], "output": "word " * 400}
    prompt_only = {**RECORDS[0], "instruction": "very long prompt " * 200}
    examples, stats = encode_records(tokenizer, [long, prompt_only, RECORDS[1]], max_len=64)
    assert stats.truncated == 2 and stats.dropped == 1 and stats.examples == 2
    assert all(len(ex.input_ids) <= 64 for ex in examples)


def test_packing_keeps_examples_whole_fills_blocks_and_is_seeded():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(20, 90) for _ in range(300)]
    groups = pack_groups(lengths, 256, seed=1)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 256 for g in groups)
    assert sum(lengths) / (256 * len(groups)) > 0.9  # first-fit leaves little slack with short examples
    assert pack_groups(lengths, 256, seed=1) == groups
    assert pack_groups(lengths, 256, seed=2) != groups  # block composition is random, not length-sorted
    with pytest.raises(ValueError):
        pack_groups([65], 64)


def test_block_positions_restart_and_targets_stay_inside_each_example():
    a = Example([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4])
    b = Example([5, 6, 7], [IGNORE, 6, 7])
    block = make_block([a, b])
    assert block.position_ids.tolist() == [0, 1, 2, 3, 0, 1, 2]
    # Position t is scored on token t+1 of the same example; an example's last token predicts nothing.
    assert block.targets.tolist() == [IGNORE, 3, 4, IGNORE, 6, 7, IGNORE]
    assert block.n_targets == a.n_targets + b.n_targets == 4


def test_collate_pads_only_to_the_longest_block_with_no_targets_on_padding():
    blocks = [make_block([Example([1, 2, 3], [IGNORE, 2, 3])]), make_block([Example([4, 5], [IGNORE, 5])])]
    batch = collate(blocks, pad_id=0)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["input_ids"][1].tolist() == [4, 5, 0]
    assert batch["targets"][1].tolist() == [5, IGNORE, IGNORE]
    assert batch["position_ids"][1].tolist() == [0, 1, 0]


@pytest.fixture(scope="module")
def tiny_packed(tiny_model_dir: Path, tiny):
    """The tiny model with the packed attention training uses (llmops/training/attention.py)."""
    from transformers import AutoModelForCausalLM

    from llmops.training import attention as _attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=_attention.register())
    model.eval()
    return model, tiny[1]


@pytest.mark.parametrize("model_fixture", ["tiny", "tiny_packed"])
def test_packed_loss_equals_each_example_run_alone(model_fixture, request):
    """No cross-example attention: the summed loss over packed blocks equals the sum of per-example losses,
    with transformers' SDPA (block-diagonal mask from position ids) and with our packed attention."""
    model, tokenizer = request.getfixturevalue(model_fixture)
    examples, _ = encode_records(tokenizer, RECORDS, max_len=512)
    blocks = pack_examples(examples, seq_len=200)
    assert len(blocks) < len(examples)  # really packed
    with torch.no_grad():
        packed, n_packed = loss_sum(model, collate(blocks, tokenizer.pad_token_id))
        alone = [loss_sum(model, collate([b], tokenizer.pad_token_id)) for b in single_blocks(examples)]
    assert n_packed == sum(n for _, n in alone)
    assert packed.item() == pytest.approx(sum(loss.item() for loss, _ in alone), rel=1e-5)

    # Control: the same blocks with positions running on (no restart) let examples see each other and
    # the loss changes, so the equality above is not an accident of the data.
    batch = collate(blocks, tokenizer.pad_token_id)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]).clone()
    with torch.no_grad():
        leaked, _ = loss_sum(model, batch)
    assert abs(leaked.item() - packed.item()) > 1e-3


def test_loss_sum_matches_transformers_own_loss_on_one_example(tiny):
    model, tokenizer = tiny
    example = encode_records(tokenizer, RECORDS[:1], max_len=512)[0][0]
    with torch.no_grad():
        ours, n = loss_sum(model, collate([make_block([example])], tokenizer.pad_token_id))
        ref = model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss
    assert ours.item() / n == pytest.approx(ref.item(), rel=1e-5)


def test_block_stream_is_the_same_for_any_world_size_and_covers_every_block_each_epoch():
    stream = BlockStream(n_blocks=10, seed=3)
    for step in range(7):
        whole = stream.step_indices(step, 4)
        split = stream.rank_indices(step, 4, 0, 2) + stream.rank_indices(step, 4, 1, 2)
        assert split == whole == BlockStream(10, 3).step_indices(step, 4)
    first_epoch = [stream.at(p) for p in range(10)]
    assert sorted(first_epoch) == list(range(10))
    assert first_epoch != [stream.at(p) for p in range(10, 20)]  # reshuffled per epoch
    assert BlockStream(10, 4).step_indices(0, 10) != stream.step_indices(0, 10)


def test_read_records_reports_bad_files_as_data_errors(tmp_path: Path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:2]))
    assert [r["id"] for r in read_records(good)] == ["0", "1"]
    with pytest.raises(DataError):
        read_records(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "instruction": "x"}\n')
    with pytest.raises(DataError):
        read_records(bad)
