"""OpenAI request bodies, validated: every field we accept is typed and bounded as OpenAI bounds it, every
field we do not support is a 400 that names it (never a silent ignore), and every error is OpenAI's error
shape with a one-line cause. A client's malformed body is a 400 here, before any work is done for it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.http.errors import error_body

# Protocol bounds (OpenAI's where it documents one). Not tunables: they keep one request's cost bounded.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seed is a signed 64-bit integer
MAX_STOP = 4  # stop sequences per request
MAX_STOP_CHARS = 256  # characters per stop sequence (the stream holds back len - 1 characters)
MAX_MESSAGES = 2048  # messages / input items per request
MAX_TOOLS = 128  # tools per request
MAX_NAME_CHARS = 256  # model, tool and function names


class ApiError(Exception):
    """An error answered to the client: HTTP status, one-line message, the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ToolCallFunction(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for i, part in enumerate(self.content):
            if part.type not in ("text", "input_text", "output_text") or part.text is None:
                raise ApiError(400, f"content part type {part.type!r} is not supported (text only)",
                               f"messages.content.{i}.type")
            parts.append(part.text)
        return "".join(parts)


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class ToolChoiceFunction(BaseModel):
    name: str = Field(max_length=MAX_NAME_CHARS)


class ToolChoice(BaseModel):
    """`{"type": "function", "function": {"name": ...}}`: the one forced-call form."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: ToolChoiceFunction


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """chat's `response_format` and responses' `text.format` (which puts the json_schema fields inline)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    def schema_object(self) -> Any:
        return self.json_schema.schema_ if self.json_schema is not None else self.schema_


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: ResponseFormat | None = None


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)]


class SamplingFields(_Body):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    n: int | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


class ChatRequest(SamplingFields):
    model: str
    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: Stop | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(None, ge=1)
    stop: Stop | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


class ResponsesRequest(_Body):
    model: str
    input: str | list[dict[str, Any]] = Field(max_length=MAX_MESSAGES * 64)  # str: characters; list: items
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    text: TextConfig | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    background: bool | None = None


_TYPE_TAGS = ("str", "int", "float", "bool", "list", "dict")


def _param(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the request parameter it names (union branch tags dropped)."""
    def is_tag(part: str) -> bool:
        return "[" in part or "-" in part or part[:1].isupper() or part in _TYPE_TAGS
    return ".".join(str(p) for p in loc if isinstance(p, int) or not is_tag(str(p)))


def parse(model: type[BaseModel], data: Any) -> Any:
    """Validate a JSON body; the most specific problem becomes a 400 naming its parameter."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        # in a union, the branch that got furthest; a bound broken beats "wrong type"
        err = max(errors, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
        loc = _param(err["loc"])
        raise ApiError(400, f"invalid {loc}: {err['msg']}", loc) from None


def reject_unsupported(req: BaseModel) -> None:
    """400 for unknown fields and for values we do not implement (rather than answering something else)."""
    extra = sorted((req.model_extra or {}).keys())
    if extra:
        raise ApiError(400, f"unrecognized request argument: {extra[0]}", extra[0])
    checks: list[tuple[str, bool]] = [
        ("n", getattr(req, "n", None) not in (None, 1)),
        ("logprobs", bool(getattr(req, "logprobs", None))),
        ("top_logprobs", getattr(req, "top_logprobs", None) is not None),
        ("logit_bias", bool(getattr(req, "logit_bias", None))),
        ("frequency_penalty", bool(getattr(req, "frequency_penalty", None))),
        ("presence_penalty", bool(getattr(req, "presence_penalty", None))),
        ("echo", bool(getattr(req, "echo", None))),
        ("suffix", bool(getattr(req, "suffix", None))),
        ("best_of", getattr(req, "best_of", None) not in (None, 1)),
        ("previous_response_id", getattr(req, "previous_response_id", None) is not None),
        ("reasoning", getattr(req, "reasoning", None) is not None),
        ("include", bool(getattr(req, "include", None))),
        ("background", bool(getattr(req, "background", None))),
    ]
    for name, bad in checks:
        if bad:
            raise ApiError(400, f"parameter {name!r} is not supported by this server (value "
                           f"{getattr(req, name)!r})", name, "unsupported_parameter")
