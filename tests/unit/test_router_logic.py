"""The router's logic without processes: the exact weighted split, sticky session buckets, the stream parser
(text, usage, terminal event, the injected usage chunk), the raw-observation window, the admin token file,
and the model server's test-only fault setting."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from pathlib import Path

import pytest

from llmops.errors import LlmopsError
from serving.router.metrics import Observation, Window
from serving.router.split import CANARY, STABLE, Split, session_bucket
from serving.router.stream import StreamParser, answer_text


@pytest.mark.parametrize("percent", [1, 10, 25, 33, 50, 99])
def test_split_is_exact_in_every_block_of_100(percent: int) -> None:
    split = Split(percent, seed=3)
    for _ in range(5):
        assert Counter(split.side() for _ in range(100))[CANARY] == percent


def test_split_edges_and_live_change() -> None:
    split = Split(0)
    assert {split.side() for _ in range(300)} == {STABLE}
    split.set_canary_percent(100)
    assert {split.side() for _ in range(300)} == {CANARY}
    split.set_canary_percent(20)  # a change starts a fresh block: the next 100 hold exactly 20
    assert Counter(split.side() for _ in range(100))[CANARY] == 20
    with pytest.raises(ValueError, match="0 to 100"):
        split.set_canary_percent(101)
    with pytest.raises(ValueError):
        split.set_canary_percent(True)  # type: ignore[arg-type]


def test_split_order_is_random_inside_a_block() -> None:
    """A load generator cycling through two prompt kinds must not put one kind on one side."""
    split = Split(50, seed=5)
    sides = [split.side() for _ in range(200)]
    even = Counter(side for i, side in enumerate(sides) if i % 2 == 0)
    assert 20 < even[CANARY] < 80  # strict alternation would give 0 or 100


def test_sessions_stick_and_move_only_past_the_weight() -> None:
    sessions = [f"s{i}" for i in range(500)]
    assert [session_bucket(s) for s in sessions] == [session_bucket(s) for s in sessions]
    assert 0.15 < sum(session_bucket(s) < 25 for s in sessions) / 500 < 0.35
    split = Split(25, seed=1)
    before = {s: split.side(s) for s in sessions}
    assert all(split.side(s) == before[s] for s in sessions)  # same session, same side
    split.set_canary_percent(40)
    after = {s: split.side(s) for s in sessions}
    assert all(after[s] == CANARY for s in sessions if before[s] == CANARY)
    assert {s for s in sessions if before[s] != after[s]} == {s for s in sessions if 25 <= session_bucket(s) < 40}


def test_shadow_share_is_exact() -> None:
    split = Split(0, shadow_percent=10, seed=2)
    assert sum(split.mirror() for _ in range(1000)) == 100


def _sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def test_stream_parser_chat_holds_done_and_drops_injected_usage() -> None:
    parser = StreamParser("/v1/chat/completions", drop_usage_chunk=True)
    chunks = [_sse({"choices": [{"delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
              _sse({"choices": [{"delta": {"content": "Hel"}, "finish_reason": None}]}),
              _sse({"choices": [{"delta": {"content": "lo"}, "finish_reason": None}]}),
              _sse({"choices": [{"delta": {}, "finish_reason": "length"}]}),
              _sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
              b"data: [DONE]\n\n"]
    wire = b"".join(chunks)
    forwarded, terminal = b"", None
    for i in range(0, len(wire), 7):  # split anywhere: events are forwarded whole, as soon as complete
        out, term = parser.feed(wire[i:i + 7])
        forwarded += out
        terminal = terminal or term
    assert forwarded == b"".join(chunks[:4]) and terminal == b"data: [DONE]\n\n"
    assert parser.text() == "Hello" and parser.finish == "length" and parser.first_content
    assert parser.usage == {"prompt_tokens": 5, "completion_tokens": 2} and parser.error is None


def test_stream_parser_responses_and_errors() -> None:
    parser = StreamParser("/v1/responses")
    delta = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"ok"}\n\n'
    done = (b'event: response.completed\ndata: {"type":"response.completed","response":{"status":"completed",'
            b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n')
    out, term = parser.feed(delta + done)
    assert out == delta and term == done and parser.text() == "ok"
    assert parser.usage == {"prompt_tokens": 3, "completion_tokens": 1} and parser.finish == "completed"
    broken = StreamParser("/v1/completions")
    out, term = broken.feed(_sse({"error": {"message": "engine error: boom"}}))
    assert term is None and broken.error == "engine error: boom"


def test_answer_text_of_each_route() -> None:
    assert answer_text("/v1/chat/completions", {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}) \
        == ("hi", "stop")
    tool = {"choices": [{"message": {"content": None, "tool_calls": [{"function": {"arguments": '{"a":1}'}}]},
                         "finish_reason": "tool_calls"}]}
    assert answer_text("/v1/chat/completions", tool) == ('{"a":1}', "tool_calls")
    assert answer_text("/v1/completions", {"choices": [{"text": "x", "finish_reason": "length"}]}) == ("x", "length")
    resp = {"status": "completed", "output": [{"content": [{"type": "output_text", "text": "yo"}]}]}
    assert answer_text("/v1/responses", resp) == ("yo", "completed")


def test_window_uses_raw_observations_in_range() -> None:
    window = Window(maxlen=1000)
    for i in range(100):
        window.add(Observation(end=1000 + i, side=STABLE, error=False, latency_s=i / 100, ttft_s=i / 1000))
    for i in range(10):
        window.add(Observation(end=1000 + i, side=CANARY, error=i < 3, latency_s=1.0, ttft_s=None))
    stats = window.stats(1000, 1100)
    assert stats["stable"]["requests"] == 100 and stats["stable"]["errors"] == 0
    assert stats["stable"]["latency_p50_s"] == pytest.approx(0.495)
    assert stats["stable"]["latency_p95_s"] == pytest.approx(0.9405)
    assert stats["stable"]["ttft_p95_s"] == pytest.approx(0.09405)
    assert stats["canary"] == {"requests": 10, "errors": 3, "latency_p50_s": 1.0, "latency_p95_s": 1.0,
                               "ttft_p50_s": None, "ttft_p95_s": None}
    assert window.stats(1050, 1060)["stable"]["requests"] == 10  # [since, until)
    small = Window(maxlen=5)
    for i in range(10):
        small.add(Observation(end=i, side=STABLE, error=False, latency_s=1, ttft_s=None))
    assert small.stats(0, 100)["stable"]["requests"] == 5  # bounded memory


def test_admin_token_file_is_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.router import TOKEN_ENV, admin_token

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token = admin_token(tmp_path)
    path = tmp_path / "router" / "admin-token"
    assert len(token) >= 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert admin_token(tmp_path) == token
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert admin_token(tmp_path) == "from-env"


def test_serve_faults_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.generation import FAULTS_ENV, Faults

    monkeypatch.setenv(FAULTS_ENV, "error_rate=0.5, latency_s=2")
    assert Faults.from_env() == Faults(error_rate=0.5, latency_s=2.0)
    monkeypatch.delenv(FAULTS_ENV)
    assert Faults.from_env() == Faults()
    for bad in ("error_rate=2", "latency=1", "error_rate=x"):
        monkeypatch.setenv(FAULTS_ENV, bad)
        with pytest.raises(LlmopsError, match=FAULTS_ENV):
            Faults.from_env()
