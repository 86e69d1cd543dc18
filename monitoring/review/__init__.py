"""The review queue: feedback lands as *pending*; a person accepts, edits or rejects it (on the web page or the
CLI) before it may become training data. Only accepted (incl. edited) feedback reaches `llmops log export`.

queue.py   the operations over the inference log database (list, count, decide, audit, the export's gate)
web.py     the small web app `llmops review serve` runs (bearer auth, session cookie + CSRF token)
static/    its page, script and style
"""

from monitoring.review.queue import (
    ACTIONS,
    Conflict,
    ReviewError,
    ReviewItem,
    ReviewQueue,
    UnknownItem,
    accepted_only,
)

__all__ = ["ACTIONS", "Conflict", "ReviewError", "ReviewItem", "ReviewQueue", "UnknownItem", "accepted_only"]
