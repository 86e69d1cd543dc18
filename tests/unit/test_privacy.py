"""llmops.privacy: the PII detector's measured precision/recall floor, scrubbing, custom patterns, no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.params import PrivacyParams, PrivacyPattern
from llmops.privacy import find_pii, scrub_record, scrub_text
from llmops.privacy.evalset import OUT, build, load, score

ROOT = Path(__file__).resolve().parents[2]
FLOOR = {"EMAIL": (0.95, 0.95), "PHONE": (0.9, 0.9), "CREDIT_CARD": (0.95, 0.95), "IBAN": (0.95, 0.95),
         "IP_ADDRESS": (0.95, 0.95), "SECRET": (0.95, 0.95)}  # (precision, recall); measured: benchmarks/README.md
P = PrivacyParams()


def test_precision_and_recall_floor_per_kind_on_the_labelled_set() -> None:
    records = load(ROOT / OUT)
    assert sum(1 for r in records if not r["spans"]) >= 200  # hard negatives are part of the measure
    table = score(records, lambda text: find_pii(text, P))
    assert set(table) == set(FLOOR), table  # no finding of a kind that was never planted
    for kind, (precision, recall) in FLOOR.items():
        assert table[kind]["labelled"] >= 50
        assert table[kind]["precision"] >= precision, (kind, table[kind])
        assert table[kind]["recall"] >= recall, (kind, table[kind])


def test_evaluation_set_is_regenerated_byte_for_byte() -> None:
    corpus = ROOT / "data/sample/base.jsonl"
    if not corpus.is_file():
        pytest.skip("the sample corpus is built by `dvc repro` (data/sample/base.jsonl)")
    assert build(corpus) == load(ROOT / OUT)


def test_scrub_text_replaces_each_kind_with_its_placeholder() -> None:
    text = ("mail anna.schmidt@example.com, call +44 20 7946 0958, card 4111-1111-1111-1111, "
            "IBAN DE89 3704 0044 0532 0130 00 from 10.1.2.3 with key AKIAIOSFODNN7EXAMPLE; python 3.11.4")
    out, counts = scrub_text(text, P)
    assert out == ("mail <EMAIL>, call <PHONE>, card <CREDIT_CARD>, IBAN <IBAN> from <IP_ADDRESS> with key "
                   "<SECRET>; python 3.11.4")
    assert counts == {"EMAIL": 1, "PHONE": 1, "CREDIT_CARD": 1, "IBAN": 1, "IP_ADDRESS": 1, "SECRET": 1}


def test_a_card_number_failing_luhn_is_left_alone() -> None:
    assert find_pii("order 4111 1111 1111 1112 shipped", P) == []


def test_private_key_block_is_one_finding() -> None:
    pem = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n"
           "-----END PRIVATE KEY-----")
    out, counts = scrub_text(f"here:\n{pem}\nthanks", P)
    assert (out, counts) == ("here:\n<SECRET>\nthanks", {"SECRET": 1})


def test_custom_pattern_from_params() -> None:
    params = PrivacyParams(custom=[PrivacyPattern(kind="EMPLOYEE_ID", regex=r"\bEMP-\d{6}\b")])
    out, counts = scrub_text("badge EMP-004211 and EMP-12", params)
    assert (out, counts) == ("badge <EMPLOYEE_ID> and EMP-12", {"EMPLOYEE_ID": 1})


def test_bad_custom_pattern_names_the_fix() -> None:
    from llmops.errors import LlmopsError

    with pytest.raises(LlmopsError, match=r"privacy\.custom"):
        find_pii("x", PrivacyParams(custom=[PrivacyPattern(kind="X", regex="(")]))


def test_scrub_record_covers_text_fields_and_chat_messages() -> None:
    rec = {"id": "abc", "instruction": "I am ben.okafor@startup.io", "input": "", "output": "ok",
           "prompt": [{"role": "user", "content": "token ghp_" + "a1B2" * 9}], "source": "feedback"}
    out, counts = scrub_record(rec, P)
    assert out["instruction"] == "I am <EMAIL>" and out["prompt"][0]["content"] == "token <SECRET>"
    assert out["id"] == "abc" and rec["instruction"].endswith("startup.io")  # ids kept, input not mutated
    assert counts == {"EMAIL": 1, "SECRET": 1}


def test_no_spacy_model_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    import spacy

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a spaCy model was loaded")

    monkeypatch.setattr(spacy, "load", no_model)
    fresh = PrivacyParams(min_score=0.31)  # another config: a new engine is built under the patch
    assert [f.kind for f in find_pii("ip 192.168.0.1", fresh)] == ["IP_ADDRESS"]
