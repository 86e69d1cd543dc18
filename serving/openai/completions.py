"""POST /v1/completions: one raw prompt (text or token ids) over the generation service."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.api import ApiError, CompletionRequest
from serving.generation import GenerationService, Job
from serving.generation_prompt import encode_text
from serving.openai.common import collect, done_chunks, prepare, sse, stream, usage
from serving.scheduler import Sequence

ROUTE = "/v1/completions"
router = APIRouter()


def build_job(service: GenerationService, req: CompletionRequest) -> Job:
    prompt: Any = req.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise ApiError(400, "one prompt per request (a list of several prompts is not supported)", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "prompt must not be empty", "prompt")
        ids = encode_text(service.engine.tokenizer, prompt)
    else:
        ids = [int(t) for t in prompt]
        if not ids or any(t < 0 or t >= service.vocab for t in ids):
            raise ApiError(400, f"prompt token ids must be non-empty and in 0..{service.vocab - 1}", "prompt")
    sampling = service.sampling_for(len(ids), req.max_tokens, req.temperature, req.top_p, req.seed, req.stop)
    return Job(ROUTE, ids, prompt, sampling)


@router.post(ROUTE)
async def completions(request: Request) -> Response:
    req, job = await prepare(request, CompletionRequest, build_job)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "object": "text_completion", "created": created, "model": req.model}
    if not req.stream:
        seq, text, finish = await collect(job, request)
        return JSONResponse({**head, "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                                  "logprobs": None}],
                             "usage": usage(seq), "system_fingerprint": request.app.state.llmops.model.label})

    def shape(kind: str, value: str, seq: Sequence) -> list[str]:
        if kind == "start":
            return []
        text, finish = (value, None) if kind == "delta" else ("", value)
        return [sse({**head, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]})]

    include_usage = bool((req.stream_options or {}).get("include_usage"))
    return await stream(job, request, shape, done_chunks(head, include_usage))
