"""Reading OpenAI answers as they pass through the router: the text, finish reason and token usage of a JSON
body or of a server-sent-event stream (chat/completions chunks, or Responses API events).

The stream parser forwards every event the moment it is complete (an incomplete SSE event is of no use to a
client), holds back the terminal one (`data: [DONE]`, or `response.completed`/`incomplete`/`failed`) so the
router can run its hooks first, and can drop the usage-only chunk the router asked for on the client's behalf.
"""

from __future__ import annotations

import json
from typing import Any

_TERMINAL_RESPONSES = ("response.completed", "response.incomplete", "response.failed")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def usage_of(data: dict[str, Any]) -> dict[str, int] | None:
    """`usage` as prompt/completion tokens, from chat/completions (`prompt_tokens`) or Responses (`input_tokens`)."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:
        return {"prompt_tokens": int(usage.get("input_tokens") or 0),
                "completion_tokens": int(usage.get("output_tokens") or 0)}
    return {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0)}


def answer_text(route: str, data: dict[str, Any]) -> tuple[str, str | None]:
    """The generated text and finish reason of a non-streaming answer (a tool call's arguments for a tool call)."""
    if route == "/v1/responses":
        texts = [part.get("text", "") for item in data.get("output") or [] if isinstance(item, dict)
                 for part in item.get("content") or [] if isinstance(part, dict)]
        status = data.get("status")
        return "".join(t for t in texts if isinstance(t, str)), None if status is None else str(status)
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    if route == "/v1/completions":
        return str(choice.get("text") or ""), choice.get("finish_reason")
    message = choice.get("message") or {}
    text = message.get("content")
    if text is None and message.get("tool_calls"):
        text = "".join(str((c.get("function") or {}).get("arguments", "")) for c in message["tool_calls"])
    return str(text or ""), choice.get("finish_reason")


class StreamParser:
    def __init__(self, route: str, *, drop_usage_chunk: bool = False) -> None:
        self.route, self.drop_usage_chunk = route, drop_usage_chunk
        self._buf = b""
        self._parts: list[str] = []
        self.first_content = False
        self.finish: str | None = None
        self.usage: dict[str, int] | None = None
        self.error: str | None = None

    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, chunk: bytes) -> tuple[bytes, bytes | None]:
        """Bytes to forward now, and the terminal event once it has arrived (to send after the hooks)."""
        self._buf += chunk
        out: list[bytes] = []
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                return b"".join(out), None
            event, self._buf = self._buf[:end + 2], self._buf[end + 2:]
            keep, terminal = self._event(event)
            if terminal:
                return b"".join(out), event + self._buf
            if keep:
                out.append(event)

    def _event(self, event: bytes) -> tuple[bool, bool]:
        """(forward it, it is the terminal event)."""
        data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return True, False
        if data == b"[DONE]":
            return False, True
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return True, False
        if not isinstance(obj, dict):
            return True, False
        if self.route == "/v1/responses":
            return self._responses_event(obj)
        return self._chunk(obj)

    def _responses_event(self, obj: dict[str, Any]) -> tuple[bool, bool]:
        kind = obj.get("type")
        if kind == "response.output_text.delta":
            self._add(obj.get("delta"))
        elif kind in _TERMINAL_RESPONSES:
            response = obj.get("response") if isinstance(obj.get("response"), dict) else {}
            self.finish = response.get("status")
            self.usage = usage_of(response)
            if kind == "response.failed":
                self.error = str(_dict(response.get("error")).get("message") or "response failed")
            return False, True
        elif kind == "error":
            self.error = str(obj.get("message") or _dict(obj.get("error")).get("message") or "stream error")
        return True, False

    def _chunk(self, obj: dict[str, Any]) -> tuple[bool, bool]:
        """A chat/completions chunk: its text (or tool-call arguments), finish reason, usage, or an error."""
        if isinstance(obj.get("error"), dict):
            self.error = str(obj["error"].get("message") or "stream error")
            return True, False
        usage = usage_of(obj)
        if usage is not None:
            self.usage = usage
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list):
            return not (self.drop_usage_chunk and usage is not None), False
        choice = _dict(choices[0])
        if self.route == "/v1/completions":
            self._add(choice.get("text"))
        else:
            delta = _dict(choice.get("delta"))
            self._add(delta.get("content"))
            for call in delta.get("tool_calls") or []:
                self._add(_dict(_dict(call).get("function")).get("arguments"))
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        return True, False

    def _add(self, text: Any) -> None:
        if isinstance(text, str) and text:
            self._parts.append(text)
            self.first_content = True


def error_event(route: str, message: str, code: str) -> bytes:
    """The SSE event that ends a broken stream honestly, in OpenAI's stream error shape: chat/completions send
    `data: {"error": {...}}`, the Responses API an `error` event. No `[DONE]` follows it."""
    if route == "/v1/responses":
        payload = {"type": "error", "code": code, "message": message, "param": None}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    payload = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
