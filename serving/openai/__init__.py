"""The OpenAI wire formats, one thin module per endpoint over the generation service (serving.generation), as
vLLM's OpenAI entrypoints are built: each turns its request into a `Job` and the job's events into its
response shape; `common` holds what they share."""

from __future__ import annotations

from fastapi import FastAPI

from serving.openai import chat, completions, models, responses

ROUTES = (chat.ROUTE, completions.ROUTE, responses.ROUTE, "/v1/models")


def add_openai_routes(app: FastAPI) -> None:
    for module in (chat, completions, responses, models):
        app.include_router(module.router)
