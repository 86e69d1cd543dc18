"""The benchmark's FLOP formula (benchmarks/flops.py) against torch's own FLOP counter and a hand count."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmops.training.flops import ModelShape, micro_batch, segment_lengths, step_flops


def test_hand_count_packed_padded_and_causal_rows():
    config = SimpleNamespace(hidden_size=4, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                             head_dim=2, intermediate_size=6, vocab_size=10)
    shape = ModelShape.from_config(config, lora_r=1, lora_targets=["q_proj", "v_proj"])
    # q 4x4, k 4x2, v 4x2, o 4x4, gate/up/down 4x6: 120 weights; LoRA r=1 on q (4+4) and v (4+2): 14
    assert (shape.n_linear, shape.n_lora) == (120, 14)
    # layer 0 skips the input grads of q, k, v (2 * (16 + 8 + 8)) and of LoRA A on q and v (2 * 4 each)
    assert shape.per_token == 4 * 120 + 6 * 14 - (64 + 16)
    masked = micro_batch([[3, 2], [4]], width=5)  # a packed row and a padded row: full 5-wide rows are scored
    causal = micro_batch([[4]])  # one unpadded sequence: the causal fast path, 4*5/2 pairs
    assert masked.masked and not causal.masked
    assert (masked.attention_pairs, causal.attention_pairs) == (9 * 5, 10)
    flops = step_flops(shape, [masked, causal])
    assert flops["total"] == 13 * shape.per_token + 13 * 4 * 4 * 10 + (45 + 10) * 12 * 2 * 2
    # ours' packed attention runs each example alone, causal: 3*4/2 + 2*3/2 + 4*5/2 pairs, padding not credited
    packed = micro_batch([[3, 2], [4]], width=5, per_example=True)
    assert not packed.masked and packed.attention_pairs == 6 + 3 + 10
    assert segment_lengths([0, 1, 2, 0, 1, 0]) == (3, 2, 1)


def test_formula_matches_torch_flop_counter_on_a_packed_lora_step():
    """Forward + backward of a tiny PEFT Llama on one packed block with answer-only logits, as ours trains."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmops.training.data import Example, collate, loss_sum, make_block

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         attn_implementation="eager")  # eager scores every pair of the row, as SDPA with a mask
    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = get_peft_model(LlamaForCausalLM(config),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
    examples = [Example([1, 5, 6, 7, 8], [-100, -100, 6, 7, 8]), Example([2, 9, 10, 11, 12, 13, 14],
                                                                          [-100, -100, -100, -100, 12, 13, 14])]
    batch = collate([make_block(examples)], pad_id=0)
    with FlopCounterMode(display=False) as counter:
        loss, n = loss_sum(model, batch)
        loss.backward()
    shape = ModelShape.from_config(config, lora_r=4, lora_targets=targets)
    expected = step_flops(shape, [micro_batch([[5, 7]], logits=n)])["total"]
    assert counter.get_total_flops() == expected  # exact: every matmul torch ran, and no other
