"""The inference log (contract C6): a durable, group-committed record of every answered request and its feedback.

`open_log(settings)` -> `InferenceLog` with `hook` (a C1 request hook), `feedback`, `query`, `get`, `prune`,
`close`; `add_feedback_route(app, log)` adds `POST /v1/feedback` to the model server or the router.
"""

from monitoring.inference_log.feedback import add_feedback_route
from monitoring.inference_log.log import InferenceLog, UnknownRequest, open_log
from monitoring.inference_log.store import FeedbackEntry, LoggedRequest

__all__ = ["FeedbackEntry", "InferenceLog", "LoggedRequest", "UnknownRequest", "add_feedback_route", "open_log"]
