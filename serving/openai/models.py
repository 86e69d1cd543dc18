"""GET /v1/models: the one model this server serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    state = request.app.state.llmops
    model = state.model
    info = state.engine.info()
    return {"object": "list", "data": [{
        "id": model.name, "object": "model", "created": state.created, "owned_by": "llmops",
        "version": model.version, "source": model.source, "engine": info.get("kind"),
        "engine_selection": (info.get("selection") or {}).get("reason"),  # which engine and why (load_engine)
    }]}
