"""The GPU engine: a static KV cache for every slot plus one CUDA graph per decode shape (gpt-fast style).

Why: eager decoding of a 135M model on a GPU is launch-bound — 30 layers x a dozen kernels, each a Python
call — so the GPU idles between kernels. Here the cache is one preallocated tensor per layer
``[slots, Hkv, width, D]``, a decode step is a fixed sequence of kernels over *all* slots (rows not decoding
write into their row's last column, which no sequence ever reads, and their logits are dropped), and that
step is captured once per attention-width bucket as a CUDA graph and replayed: one launch per token for the
whole batch.

The decode step is written out for Llama-family decoders (SmolLM2, Llama, Qwen2, Mistral) from the
transformers model's own modules (projections with their biases, norms, MLP, rotary table), so the weights are
exactly those the eager engine loads. Mistral's sliding window is exact by bounding max_len by the window
(every key is then inside it); families whose maths differ (Qwen3's q/k norms, Gemma, Phi-3's fused
projections) are refused with a ModelError naming the family, never served wrong. Prefill runs the
transformers model once per prompt and copies its keys/values into the slot. On CPU (no graphs) the same math
runs, which is how CI checks it against the eager engine; on a GPU it is the engine `--engine auto` prefers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmops.errors import LlmopsError, ModelError
from serving.engines import register_engine
from serving.engines.base import Engine, check_decode, check_prefill
from serving.engines.checkpoint import attention, read_config

if TYPE_CHECKING:
    from llmops.params import ServeParams

SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2"}
WIDTH_BUCKET = 256  # attention width rounds up to a multiple of this: few graphs, little wasted attention


def unsupported(cfg: Any) -> str | None:
    """Why this engine's decode step cannot express the model exactly (None when it can)."""
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        return (f"the static-cache GPU engine does not support the {cfg.model_type!r} family "
                f"(supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})")
    if "sliding_attention" in attention(cfg).layer_types:
        return f"the static-cache GPU engine does not support {cfg.model_type!r} with per-layer sliding windows"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticCacheEngine(Engine):
    name = "cuda-graph"

    def __init__(self, model_dir: Path, *, max_slots: int = 8, max_len: int = 2048, device: str = "cuda",
                 dtype: torch.dtype = torch.bfloat16, graphs: bool | None = None, fuse: bool = False) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not any(model_dir.glob("*.safetensors")):
            raise LlmopsError(f"no safetensors weights in {model_dir}",
                              "serve a checkpoint saved with safe_serialization=True (pickled weights never load)")
        self.device = torch.device(device)
        self.graphs = (self.device.type == "cuda") if graphs is None else graphs
        att = attention(config := read_config(model_dir))
        if (why := unsupported(config)) is not None:
            raise ModelError(why, "serve with --engine eager")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
        self.model = model.to(self.device).eval()
        self.dtype = dtype
        self.max_slots = max_slots
        cap = att.max_positions or max_len
        # Mistral: within the window every key is visible, so the unwindowed decode step is exact there
        self.max_len = min(max_len, cap, att.windows[0] or cap)
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        self.extra_eos_ids = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])

        self.n_heads, self.n_kv, self.head_dim = att.heads, att.kv_heads, att.head_dim
        self.scale = float(getattr(self.model.model.layers[0].self_attn, "scaling", self.head_dim ** -0.5))
        width = self._bucket(self.max_len + 1)  # + the scratch column idle rows write to
        rows = max_slots
        shape = (rows, self.n_kv, width, self.head_dim)
        layers = self.model.model.layers
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in layers]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in layers]
        positions = torch.arange(width, device=self.device).unsqueeze(0)
        probe = torch.zeros(1, dtype=dtype, device=self.device)
        with torch.inference_mode():
            cos, sin = self.model.model.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0].to(dtype), sin[0].to(dtype)  # [width, D]
        self._len: dict[int, int] = {}
        # Static inputs of the captured step (graphs read these addresses on every replay).
        self._tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(rows, dtype=torch.long, device=self.device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # fuse=True compiles the step with Inductor (norms, rotary, SiLU-gates fused: fewer kernels per layer)
        # before capture; it costs a compile per width bucket, so it is a build-time choice.
        self.fuse = fuse
        self._step_fn = torch.compile(self._step, dynamic=False) if fuse else self._step
        self._pool = None

    def info(self) -> dict[str, Any]:
        import transformers

        out = {"kind": self.name, "runtime": "torch", "runtime_version": torch.__version__,
               "transformers_version": transformers.__version__, "device": str(self.device),
               "dtype": str(self.dtype).removeprefix("torch."), "cuda_graphs": self.graphs, "fused": self.fuse,
               "build_config_hash": None}
        if self.device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(self.device)
        return out

    @staticmethod
    def _bucket(n: int) -> int:
        return -(-n // WIDTH_BUCKET) * WIDTH_BUCKET

    # -- the decode step: fixed shapes, no host sync, so it can be captured ------------------------
    def _step(self, width: int) -> torch.Tensor:
        """Logits [rows, vocab] for `self._tokens` at `self._pos`, writing each row's K/V at its position."""
        m = self.model.model
        rows = self._tokens.shape[0]
        h = m.embed_tokens(self._tokens)  # [rows, H]
        cos, sin = self.cos[self._pos].unsqueeze(1), self.sin[self._pos].unsqueeze(1)  # [rows, 1, D]
        row_idx = torch.arange(rows, device=self.device)
        # key position t is visible to a row iff t <= its position: [rows, 1, 1, width]
        visible = (torch.arange(width, device=self.device).unsqueeze(0) <= self._pos.unsqueeze(1))[:, None, None]
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(rows, self.n_heads, self.head_dim)
            k = attn.k_proj(x).view(rows, self.n_kv, self.head_dim)
            v = attn.v_proj(x).view(rows, self.n_kv, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = self.k_cache[i], self.v_cache[i]
            # advanced indices around a slice put the indexed dims first: kc[row, :, pos] is [rows, Hkv, D]
            kc[row_idx, :, self._pos] = k
            vc[row_idx, :, self._pos] = v
            out = torch.nn.functional.scaled_dot_product_attention(
                q.unsqueeze(2), kc[:, :, :width], vc[:, :, :width], attn_mask=visible, scale=self.scale,
                enable_gqa=self.n_heads != self.n_kv)  # [rows, Hq, 1, D]
            h = h + attn.o_proj(out.reshape(rows, self.n_heads * self.head_dim))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.lm_head(m.norm(h))

    def _run_step(self, width: int) -> torch.Tensor:
        if not self.graphs:
            return self._step_fn(width)
        entry = self._graphs.get(width)
        if entry is None:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up the kernels (cuBLAS workspaces, Inductor) outside the capture
                    self._step_fn(width)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                logits = self._step_fn(width)
            self._pool = graph.pool()
            entry = self._graphs[width] = (graph, logits)
        graph, logits = entry
        graph.replay()
        return logits

    def capture_all(self) -> float:
        """Capture every width bucket now (the `build`); returns seconds. Serving captures lazily otherwise."""
        import time

        start = time.perf_counter()
        with torch.inference_mode():
            for width in range(WIDTH_BUCKET, self.k_cache[0].shape[2] + 1, WIDTH_BUCKET):
                self._run_step(width)
        self._reset_scratch()
        return time.perf_counter() - start

    def warmup(self) -> None:
        """Capture every width now, so no request pays for a capture (or an Inductor compile when fused)."""
        super().warmup()
        if self.graphs:
            self.capture_all()

    def _reset_scratch(self) -> None:
        self._tokens.zero_()
        self._pos.fill_(self.k_cache[0].shape[2] - 1)

    # -- the interface ------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: list[int]) -> torch.Tensor:
        return self.prefill_many([slot], [token_ids])[0]

    @torch.inference_mode()
    def prefill_many(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """One forward for all prompts, right-padded: under the causal mask a real token never sees the padding
        after it, so each row's first n positions are exactly its prompt's keys/values and logits."""
        from transformers import DynamicCache

        if len(slots) != len(prompts) or not slots:
            raise LlmopsError("prefill needs one prompt per slot", "pass equal, non-empty lists")
        for slot, ids in zip(slots, prompts, strict=True):
            check_prefill(slot, ids, self.max_slots, self.max_len)
        lengths = [len(ids) for ids in prompts]
        width = max(lengths)
        batch = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, ids in enumerate(prompts):
            batch[row, : len(ids)] = torch.tensor(ids)
        out = self.model(input_ids=batch.to(self.device), past_key_values=DynamicCache(config=self.model.config),
                         use_cache=True)
        for i, layer in enumerate(out.past_key_values.layers):
            for row, (slot, n) in enumerate(zip(slots, lengths, strict=True)):
                self.k_cache[i][slot, :, :n] = layer.keys[row, :, :n]
                self.v_cache[i][slot, :, :n] = layer.values[row, :, :n]
        for slot, n in zip(slots, lengths, strict=True):
            self._len[slot] = n
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        return out.logits[torch.arange(len(prompts), device=self.device), last].float().cpu()

    @torch.inference_mode()
    def decode(self, slots: list[int], token_ids: list[int]) -> torch.Tensor:
        check_decode(slots, token_ids, self._len, self.max_len)
        scratch = self.k_cache[0].shape[2] - 1
        tokens, pos = [0] * self.max_slots, [scratch] * self.max_slots
        # Row r is slot r. Rows not decoding now (free or paused) sit at the scratch column: their K/V write
        # lands where no sequence reads (max_len < scratch) and their logits are dropped.
        for s, t in zip(slots, token_ids, strict=True):
            tokens[s], pos[s] = int(t), self._len[s]
        width = self._bucket(max(pos[s] for s in slots) + 1)
        self._tokens.copy_(torch.tensor(tokens))
        self._pos.copy_(torch.tensor(pos))
        logits = self._run_step(width)
        for s in slots:
            self._len[s] += 1
        return logits[torch.tensor(slots, device=self.device)].float().cpu()

    def release(self, slot: int) -> None:
        self._len.pop(slot, None)


def _probe(model_dir: Path) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU here"
    try:
        cfg = read_config(model_dir)
    except ModelError as exc:
        return f"unreadable config.json: {exc}"
    return unsupported(cfg)


def _factory(model_dir: Path, params: ServeParams) -> StaticCacheEngine:
    return StaticCacheEngine(model_dir, max_slots=params.max_concurrent, max_len=params.max_len, fuse=params.gpu_fuse)


register_engine("cuda-graph", _factory, priority=40, probe=_probe)
