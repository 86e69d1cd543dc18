"""Packed attention ("packed_sdpa") computes the same loss and LoRA gradients as transformers' SDPA with its
block-diagonal mask, while scoring only pairs inside an example (fast: tiny model, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmops.training import attention as _attention
from llmops.training.data import collate, encode_records, loss_sum, pack_examples
from llmops.training.model import build_lora_model

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
RECORDS = [
    {"id": str(i), "instruction": f"Say {i} words about tea." * (1 + i % 4), "input": "" if i % 2 else "briefly",
     "output": " ".join(["tea", "is", "hot", "and", "green"][: 1 + i % 5]), "source": "t"}
    for i in range(11)
]


def test_plan_gathers_every_token_once_into_padded_groups_of_whole_examples():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 0, 1, 0, 1]])
    plan = _attention.make_plan(position_ids, overhead=4)
    flat_rows = sum(count * width for _, count, width in plan.gather)
    assert sorted(plan.scatter.tolist()) == sorted(set(plan.scatter.tolist()))  # one slot per token
    assert plan.scatter.max().item() < flat_rows
    gathered = torch.cat([index for index, _, _ in plan.gather])
    assert torch.equal(gathered[plan.scatter], torch.arange(20))  # each slot reads its own token back
    # segments 3,2,4,1 | 6,2,2 -> sorted 6,4,3,2,2,2,1: groups of similar length, never wider than the longest
    assert sum(count for _, count, _ in plan.gather) == 7
    assert max(width for _, _, width in plan.gather) == 6
    assert flat_rows < 2 * 10 * 2  # far fewer rows than one padded row per example at full width
    assert _attention.group_lengths([5, 5, 5], overhead=0) == [(3, 5)]
    assert _attention.group_lengths([100, 3], overhead=0) == [(1, 100), (1, 3)]
    assert _attention.group_lengths([100, 3], overhead=10**9) == [(2, 100)]


def _step(model_dir: Path, attn: str, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model = build_lora_model(model_dir, LORA, seed=0, device=torch.device("cpu"), attn_implementation=attn)
    model.train()
    loss, n = loss_sum(model, batch)
    (loss / n).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def test_packed_attention_equals_sdpa_block_diagonal_mask_in_loss_and_lora_grads(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _ = encode_records(tokenizer, RECORDS, max_len=512)
    blocks = pack_examples(examples, seq_len=160)
    assert len(blocks) >= 2 and max(b.n_examples for b in blocks) > 1
    batch = collate(blocks[:3], tokenizer.pad_token_id)  # packed rows, and padding at the end of shorter rows
    _attention._cache[:] = [None, -1, None]
    ref_loss, ref_grads = _step(tiny_model_dir, "sdpa", batch)
    assert _attention._cache[0] is None  # the reference really ran transformers' SDPA
    loss, grads = _step(tiny_model_dir, _attention.NAME, batch)
    plan = _attention._cache[2]
    assert plan is not None  # ... and this one the packed path, on fewer pairs than the full rows
    rows, width = batch["input_ids"].shape
    assert sum(count * w * w for _, count, w in plan.gather) < rows * width * width / 2
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 4 * 2  # lora A, B x 4 targets x 2 layers
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().max() > 0 for g in grads.values())


def test_packed_attention_falls_back_to_sdpa_with_a_padding_mask(tiny_model_dir: Path):
    """A 2D attention mask (batched generation, left padding) takes transformers' own masked SDPA path."""
    from transformers import AutoModelForCausalLM

    _attention.register()
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    outs = []
    for attn in ("sdpa", _attention.NAME):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
        with torch.no_grad():
            outs.append(model(input_ids=ids, attention_mask=mask).logits)
            generated = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
            outs.append(generated.float())
    torch.testing.assert_close(outs[0][mask.bool()], outs[2][mask.bool()], rtol=1e-5, atol=1e-5)
    assert torch.equal(outs[1], outs[3])
