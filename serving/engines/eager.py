"""The reference engine: the transformers model in PyTorch, real batched decode over per-slot KV caches.

Each slot owns its cache as per-layer (key, value) tensors [1, Hkv, len, D]. A batched decode needs one
left-padded cache for the whole batch plus an attention mask, and building it copies every cache in the
batch; the scheduler keeps the same running set for many steps, so the padded cache of the last decode is
kept as the "batch view" and reused while the next decode names the same slots (the bookkeeping shared with
the CPU engines: `slots.py`). A sequence leaving only drops its row; a sequence joining scatters the view back
to per-slot caches and rebuilds it once.
Measured against transformers 5's own continuous batching in benchmarks/README.md (serving_blocks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmops.errors import LlmopsError
from llmops.modeling.prompts import stop_token_ids
from serving.engines import register_engine
from serving.engines.slots import SlotCacheEngine

if TYPE_CHECKING:
    from llmops.params import ServeParams

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: key, value [B, Hkv, len, D]


class _BatchView:
    """The running set's caches as one left-padded cache plus its mask [B, P] (1 = real position)."""

    def __init__(self, slots: tuple[int, ...], kv: KV, mask: torch.Tensor, lengths: list[int]) -> None:
        self.slots, self.kv, self.mask, self.lengths = slots, kv, mask, lengths


class EagerEngine(SlotCacheEngine):
    name = "eager"

    def __init__(self, model_dir: Path, *, max_slots: int = 8, max_len: int = 2048, threads: int = 0,
                 dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not any(model_dir.glob("*.safetensors")):
            raise LlmopsError(f"no safetensors weights in {model_dir}",
                              "serve a checkpoint saved with safe_serialization=True (pickled weights never load)")
        if threads > 0:
            torch.set_num_threads(threads)
        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
        self.model.to(self.device).eval()
        self.dtype = dtype
        cfg = self.model.config
        self.max_slots = max_slots
        self.max_len = min(max_len, int(getattr(cfg, "max_position_embeddings", max_len) or max_len))
        # the family's end of turn: eos, the generation config's eos ids, the chat template's end-of-turn token
        self.extra_eos_ids = stop_token_ids(self.tokenizer, self.model.generation_config)
        self._init_slots()  # a slot's own cache: per-layer (key, value) [1, Hkv, len, D]

    def info(self) -> dict[str, Any]:
        import transformers

        return {"kind": self.name, "runtime": "transformers", "runtime_version": transformers.__version__,
                "torch_version": torch.__version__, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "threads": torch.get_num_threads(), "build_config_hash": None}

    # -- views (the bookkeeping is SlotCacheEngine's) ------------------------------------------------
    def _take(self, view: _BatchView, row: int, n: int) -> KV:
        width = view.mask.shape[1]
        return [(k[row:row + 1, :, width - n:].clone(), v[row:row + 1, :, width - n:].clone()) for k, v in view.kv]

    def _drop_rows(self, keep: list[int]) -> None:
        """Shrink the view to rows `keep` (in that order) and cut the left columns no kept row uses."""
        view = self._view
        idx = torch.tensor(keep, device=self.device)
        lengths = [view.lengths[i] for i in keep]
        cut = view.mask.shape[1] - max(lengths)
        kv = [(k.index_select(0, idx)[:, :, cut:], v.index_select(0, idx)[:, :, cut:]) for k, v in view.kv]
        self._view = _BatchView(tuple(view.slots[i] for i in keep), kv, view.mask.index_select(0, idx)[:, cut:],
                                lengths)

    def _pack(self, slots: tuple[int, ...], need: int) -> _BatchView:
        """A fresh left-padded view of `slots` from their per-slot caches (each popped from `_kv`)."""
        width = max(self._len[s] for s in slots)
        kv: KV = []
        for layer in range(len(self._kv[slots[0]])):
            keys, values = [], []
            for s in slots:
                k, v = self._kv[s][layer]
                pad = width - k.shape[2]
                if pad:
                    k = torch.nn.functional.pad(k, (0, 0, pad, 0))
                    v = torch.nn.functional.pad(v, (0, 0, pad, 0))
                keys.append(k)
                values.append(v)
            kv.append((torch.cat(keys), torch.cat(values)))
        mask = torch.zeros(len(slots), width, dtype=torch.long, device=self.device)
        for i, s in enumerate(slots):
            mask[i, width - self._len[s]:] = 1
        for s in slots:
            del self._kv[s]
        return _BatchView(slots, kv, mask, [self._len[s] for s in slots])

    def _next_view(self, slots: tuple[int, ...], need: int) -> _BatchView:
        """A subset of the running set (the scheduler paused some) shrinks the view; anything else rebuilds."""
        view = self._view
        if view is not None and set(slots) <= set(view.slots):
            pos = {s: i for i, s in enumerate(view.slots)}
            for i, s in enumerate(view.slots):
                if s not in slots:  # paused by the scheduler: the sequence keeps its cache
                    self._kv[s] = self._take(view, i, view.lengths[i])
            self._drop_rows([pos[s] for s in slots])
            return self._view
        self._retire_view()
        return self._pack(slots, need)

    # -- the interface ------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        self._start(slot, token_ids)
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, past_key_values=DynamicCache(config=self.model.config), use_cache=True,
                         logits_to_keep=1)
        self._keep(slot, [(layer.keys, layer.values) for layer in out.past_key_values.layers], len(token_ids))
        return out.logits[0, -1].float().cpu()

    @torch.inference_mode()
    def decode(self, slots: list[int], token_ids: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        view = self._running(slots, token_ids)
        batch = len(slots)
        mask = torch.cat([view.mask, torch.ones(batch, 1, dtype=torch.long, device=self.device)], dim=1)
        positions = torch.tensor(view.lengths, dtype=torch.long, device=self.device).unsqueeze(1)
        cache = DynamicCache(ddp_cache_data=view.kv)
        tokens = torch.tensor(token_ids, dtype=torch.long, device=self.device).unsqueeze(1)
        out = self.model(input_ids=tokens, attention_mask=mask,
                         position_ids=positions, past_key_values=cache, use_cache=True)
        view.kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        view.mask = mask
        view.lengths = [n + 1 for n in view.lengths]
        self._advance(slots)
        return out.logits[:, -1].float().cpu()

    def release(self, slot: int) -> None:
        """Forget the slot's sequence and drop its row from the view at once (the others keep theirs)."""
        super().release(slot)
        view = self._view
        if view is not None and slot in view.slots:
            keep = [i for i, s in enumerate(view.slots) if s != slot]
            if keep:
                self._drop_rows(keep)
            else:
                self._view = None


def _factory(model_dir: Path, params: ServeParams) -> EagerEngine:
    return EagerEngine(model_dir, max_slots=params.max_concurrent, max_len=params.max_len, threads=params.threads)


register_engine("eager", _factory, priority=0)
