"""The reference engine: the transformers model in PyTorch, real batched decode over per-slot KV caches.

Each slot owns its cache as per-layer (key, value) tensors [1, Hkv, len, D]. A batched decode needs one
left-padded cache for the whole batch plus an attention mask, and building it copies every cache in the
batch; the scheduler keeps the same running set for many steps, so the padded cache of the last decode is
kept as the "batch view" and reused while the next decode names the same slots. A sequence leaving only
drops its row; a sequence joining scatters the view back to per-slot caches and rebuilds it once.
Measured against transformers 5's own continuous batching in benchmarks/README.md (serving_blocks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmops.errors import LlmopsError
from llmops.modeling.prompts import stop_token_ids
from serving.engines import register_engine
from serving.engines.base import Engine

if TYPE_CHECKING:
    from llmops.params import ServeParams

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: key, value [B, Hkv, len, D]


class _BatchView:
    """The running set's caches as one left-padded cache plus its mask [B, P] (1 = real position)."""

    def __init__(self, slots: list[int], kv: KV, mask: torch.Tensor, lengths: list[int]) -> None:
        self.slots, self.kv, self.mask, self.lengths = slots, kv, mask, lengths


class EagerEngine(Engine):
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
        self._kv: dict[int, KV] = {}  # slot -> per-layer caches [1, Hkv, len, D] (absent while in the view)
        self._len: dict[int, int] = {}  # slot -> tokens in its cache
        self._view: _BatchView | None = None

    def info(self) -> dict[str, Any]:
        import transformers

        return {"kind": self.name, "runtime": "transformers", "runtime_version": transformers.__version__,
                "torch_version": torch.__version__, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "threads": torch.get_num_threads(), "build_config_hash": None}

    # -- slot bookkeeping --------------------------------------------------------------------------
    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.max_slots:
            raise LlmopsError(f"slot {slot} out of range 0..{self.max_slots - 1}", "use a slot the engine has")

    def _scatter(self, rows: list[int]) -> None:
        """Copy the given view rows back into per-slot caches, keeping only each slot's real positions."""
        view = self._view
        assert view is not None
        width = view.mask.shape[1]
        for i in rows:
            slot, n = view.slots[i], view.lengths[i]
            self._kv[slot] = [(k[i:i + 1, :, width - n:].clone(), v[i:i + 1, :, width - n:].clone())
                              for k, v in view.kv]

    def _flush_view(self) -> None:
        if self._view is not None:
            self._scatter(list(range(len(self._view.slots))))
            self._view = None

    def _drop_rows(self, keep: list[int]) -> None:
        """Shrink the view to rows `keep` (in that order) and cut the left columns no kept row uses."""
        view = self._view
        assert view is not None
        idx = torch.tensor(keep, device=self.device)
        lengths = [view.lengths[i] for i in keep]
        cut = view.mask.shape[1] - max(lengths)
        kv = [(k.index_select(0, idx)[:, :, cut:], v.index_select(0, idx)[:, :, cut:]) for k, v in view.kv]
        self._view = _BatchView([view.slots[i] for i in keep], kv, view.mask.index_select(0, idx)[:, cut:], lengths)

    def _build_view(self, slots: list[int]) -> None:
        width = max(self._len[s] for s in slots)
        layers = len(self._kv[slots[0]])
        kv: KV = []
        for layer in range(layers):
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
        self._view = _BatchView(list(slots), kv, mask, [self._len[s] for s in slots])

    def _prepare_view(self, slots: list[int]) -> None:
        view = self._view
        if view is not None and view.slots == slots:
            return
        if view is not None and set(slots) <= set(view.slots):
            pos = {s: i for i, s in enumerate(view.slots)}
            dropped = [i for i, s in enumerate(view.slots) if s not in set(slots)]
            self._scatter(dropped)  # sequences paused by the scheduler keep their caches
            self._drop_rows([pos[s] for s in slots])
            return
        self._flush_view()
        self._build_view(slots)

    # -- the interface ------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        self._check_slot(slot)
        self.release(slot)
        if not token_ids:
            raise LlmopsError("empty prompt", "send at least one token")
        if len(token_ids) >= self.max_len:
            raise LlmopsError(f"prompt of {len(token_ids)} tokens does not fit max_len {self.max_len}",
                              "shorten the prompt")
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, past_key_values=DynamicCache(config=self.model.config), use_cache=True,
                         logits_to_keep=1)
        cache = out.past_key_values
        self._kv[slot] = [(layer.keys, layer.values) for layer in cache.layers]
        self._len[slot] = len(token_ids)
        return out.logits[0, -1].float().cpu()

    @torch.inference_mode()
    def decode(self, slots: list[int], token_ids: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        if len(slots) != len(token_ids) or not slots:
            raise LlmopsError("decode needs one token per slot", "pass equal, non-empty lists")
        for s in slots:
            if s not in self._len:
                raise LlmopsError(f"slot {s} holds no sequence", "prefill the slot before decoding it")
        self._prepare_view(list(slots))
        view = self._view
        assert view is not None
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
        for s, n in zip(slots, view.lengths, strict=True):
            self._len[s] = n
        return out.logits[:, -1].float().cpu()

    def release(self, slot: int) -> None:
        self._kv.pop(slot, None)
        self._len.pop(slot, None)
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
