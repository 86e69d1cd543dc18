"""`llmops demo drift` says what each shifted window without new data decided (issue 21 part 6): pending while the
drift has not persisted, then held with "nothing new to learn", the reason and the labelling queue; no servers."""

from __future__ import annotations

from cli.drift_demo import summary_lines


def _window(severity: str, consecutive: int, trigger: dict | None, labelling: dict | None = None) -> dict:
    return {"severity": severity, "fired": ["prompt_embedding_mmd"] if severity == "drift" else [], "note": "",
            "consecutive_drift_windows": consecutive, "trigger": trigger, "labelling": labelling,
            "report_html": f"/tmp/r{consecutive}.html"}


def test_summary_names_the_held_decision_and_its_reason() -> None:
    reason = "no data new since the champion's training data covers the drifted prompts"
    result = {
        "champion": "llmops-smollm2/3", "requests_per_phase": 60,
        "reference_like": _window("watch", 0, None),
        "shifted_without_new_data": [
            _window("drift", 1, {"id": 1, "outcome": "pending", "reason": "drift in 1 of 2 windows"}),
            _window("drift", 2, {"id": 2, "outcome": "held", "reason": reason},
                    {"queued": 50, "path": "/tmp/labelling.jsonl"}),
        ],
        "feedback_export": {"rows": 60, "path": "data/feedback/x.jsonl"},
        "shifted": _window("drift", 3, {"id": 3, "outcome": "started", "reason": "new data covers the drift"}),
    }
    text = "\n".join(summary_lines(result))
    assert "paraphrased in-domain[/]: severity WATCH" in text
    held = text.index("NOTHING NEW TO LEARN: held, no retraining")
    assert text.index("pending") < held < text.index(reason) < text.index("50 drifted prompts queued")
    assert "drift in 2 consecutive window(s)" in text and "trigger #3: started" in text
