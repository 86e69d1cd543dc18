"""Review queue operations over the inference log database (the `feedback_review` and `review_audit` tables of
monitoring/inference_log/store.py), the same on SQLite and PostgreSQL.

An item is one feedback entry (POST /v1/feedback). With no review row it is *pending*; `decide` makes it
*accepted* (as sent, or *edited*: the reviewer's correction/rating replace the user's) or *rejected*, in one
transaction with its audit row (who, when, how, what changed). A decision names the status the reviewer saw
(`expect`, default pending), so two reviewers deciding the same item at once cannot both win: the second gets a
Conflict. `accepted_only` is the export's gate: it hands the export only what a reviewer accepted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import sqlalchemy as sa

from llmops.errors import LlmopsError
from monitoring.inference_log.store import (
    FeedbackEntry,
    LoggedRequest,
    feedback_table,
    requests_table,
    review_audit_table,
    review_table,
)

ACTIONS = ("accept", "edit", "reject")
STATUSES = ("pending", "accepted", "rejected")
_AFTER = {"accept": "accepted", "edit": "accepted", "reject": "rejected"}


class ReviewError(LlmopsError):
    """A decision that cannot be made as asked (a client's 400)."""


class UnknownItem(ReviewError):
    """No feedback entry with that id (a client's 404)."""


class Conflict(ReviewError):
    """The item is no longer in the status the reviewer saw (a client's 409)."""


@dataclass
class ReviewItem:
    """One feedback entry with its request and its review state, as the page and `review list --json` show it."""

    id: int  # the feedback entry's id: what accept/edit/reject name
    request_id: str
    time: float  # when the feedback arrived
    request_time: float
    model: str
    model_version: str | None
    prompt: Any  # the logged prompt: messages or a string
    response: str  # the served answer
    status_code: int  # the request's HTTP status
    rating: int | None  # what the user sent
    correction: str | None
    comment: str | None
    status: str = "pending"  # pending | accepted | rejected
    edited: bool = False
    reviewed_rating: int | None = None  # what the reviewer let through (accepted: the training target)
    reviewed_correction: str | None = None
    reviewer: str | None = None
    reviewed_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Filters:
    status: str | None = "pending"  # None: every status
    model_version: str | None = None  # "-" matches requests with no model version
    rating: str | None = None  # "-1" | "0" | "1" | "none"
    since: float | None = None  # feedback time, unix seconds
    until: float | None = None
    limit: int = 200
    offset: int = 0

    def check(self) -> Filters:
        if self.status not in (None, *STATUSES):
            raise ReviewError(f"unknown status {self.status!r}", "use pending, accepted, rejected or all")
        if self.rating not in (None, "-1", "0", "1", "none"):
            raise ReviewError(f"unknown rating filter {self.rating!r}", "use -1, 0, 1 or none")
        if not (1 <= self.limit <= 10000) or self.offset < 0:
            raise ReviewError("limit must be 1..10000 and offset >= 0", "pass a smaller --limit")
        return self


def _joined() -> Any:
    f, r, v = feedback_table, requests_table, review_table
    return (f.join(r, r.c.request_id == f.c.request_id).outerjoin(v, v.c.feedback_id == f.c.id))


def _columns() -> list[Any]:
    f, r, v = feedback_table, requests_table, review_table
    return [f.c.id, f.c.request_id, f.c.time, r.c.time.label("request_time"), r.c.model, r.c.model_version,
            r.c.prompt, r.c.response, r.c.status.label("status_code"), f.c.rating, f.c.correction, f.c.comment,
            v.c.status.label("review_status"), v.c.edited, v.c.rating.label("reviewed_rating"),
            v.c.correction.label("reviewed_correction"), v.c.reviewer, v.c.time.label("reviewed_at")]


def _item(row: Any) -> ReviewItem:
    m = dict(row._mapping)
    m["prompt"] = json.loads(m["prompt"])
    m["status"] = m.pop("review_status") or "pending"
    m["edited"] = bool(m["edited"])
    return ReviewItem(**m)


def _where(stmt: Any, flt: Filters) -> Any:
    f, r, v = feedback_table, requests_table, review_table
    if flt.status == "pending":
        stmt = stmt.where(v.c.feedback_id.is_(None))
    elif flt.status is not None:
        stmt = stmt.where(v.c.status == flt.status)
    if flt.model_version == "-":
        stmt = stmt.where(r.c.model_version.is_(None))
    elif flt.model_version:
        stmt = stmt.where(r.c.model_version == flt.model_version)
    if flt.rating == "none":
        stmt = stmt.where(f.c.rating.is_(None))
    elif flt.rating is not None:
        stmt = stmt.where(f.c.rating == int(flt.rating))
    if flt.since is not None:
        stmt = stmt.where(f.c.time >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(f.c.time < flt.until)
    return stmt


class ReviewQueue:
    """The queue over one inference log store (a `SqlStore`: its engine and tables)."""

    def __init__(self, store: Any) -> None:
        self.engine: sa.Engine = store.engine

    def items(self, flt: Filters | None = None) -> list[ReviewItem]:
        """Matching items, oldest feedback first (a queue: first in, first reviewed)."""
        flt = (flt or Filters()).check()
        stmt = _where(sa.select(*_columns()).select_from(_joined()), flt)
        stmt = stmt.order_by(feedback_table.c.time, feedback_table.c.id).limit(flt.limit).offset(flt.offset)
        with self.engine.connect() as conn:
            return [_item(row) for row in conn.execute(stmt)]

    def count(self, flt: Filters | None = None) -> int:
        flt = (flt or Filters()).check()
        stmt = _where(sa.select(sa.func.count()).select_from(_joined()), flt)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def counts(self) -> dict[str, int]:
        """Items per status (pending = what is waiting)."""
        return {s: self.count(Filters(status=s)) for s in STATUSES}

    def model_versions(self) -> list[str]:
        """The model versions that have feedback (the page's filter choices; "-" for none)."""
        r = requests_table
        stmt = sa.select(r.c.model_version).select_from(_joined()).distinct()
        with self.engine.connect() as conn:
            return sorted(v if v is not None else "-" for v in conn.execute(stmt).scalars())

    def get(self, feedback_id: int) -> ReviewItem:
        stmt = sa.select(*_columns()).select_from(_joined()).where(feedback_table.c.id == feedback_id)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise UnknownItem(f"no feedback item with id {feedback_id}", "`llmops review list` shows the ids")
        return _item(row)

    def decide(self, feedback_id: int, action: str, *, reviewer: str, via: str = "cli", key_id: str | None = None,
               correction: str | None = None, rating: int | None = None,
               expect: Iterable[str] | None = ("pending",)) -> ReviewItem:
        """Accept, edit or reject one item, audited; `expect`: the statuses the reviewer saw (None: any)."""
        if action not in ACTIONS:
            raise ReviewError(f"unknown action {action!r}", "use accept, edit or reject")
        if not reviewer.strip():
            raise ReviewError("a decision needs a reviewer name", "pass --reviewer NAME")
        item = self.get(feedback_id)
        expect = tuple(expect) if expect is not None else None
        if expect is not None and item.status not in expect:
            raise Conflict(f"item {feedback_id} is {item.status} (by {item.reviewer}), not {'/'.join(expect)}",
                           "reload the queue; to change an earlier decision say so (--redecide)")
        new_rating, new_correction = _decided_values(item, action, correction, rating)
        now = time.time()
        row = {"feedback_id": feedback_id, "request_id": item.request_id, "status": _AFTER[action],
               "rating": new_rating, "correction": new_correction, "edited": action == "edit",
               "reviewer": reviewer[:128], "time": now}
        before = {"status": item.status, "rating": item.reviewed_rating if item.reviewer else item.rating,
                  "correction": item.reviewed_correction if item.reviewer else item.correction}
        after = {"status": row["status"], "rating": new_rating, "correction": new_correction}
        audit = {"feedback_id": feedback_id, "request_id": item.request_id, "time": now, "reviewer": reviewer[:128],
                 "via": via, "key_id": key_id, "action": action, "before": json.dumps(before),
                 "after": json.dumps(after)}
        v = review_table
        try:
            with self.engine.begin() as conn:
                if item.status == "pending":
                    conn.execute(v.insert().values(**row))  # a racing second insert fails on the primary key
                elif conn.execute(v.update().where(v.c.feedback_id == feedback_id, v.c.status == item.status,
                                                   v.c.time == item.reviewed_at).values(**row)).rowcount != 1:
                    raise Conflict(f"item {feedback_id} was decided by someone else meanwhile", "reload the queue")
                conn.execute(review_audit_table.insert().values(**audit))
        except sa.exc.IntegrityError:
            raise Conflict(f"item {feedback_id} was decided by someone else meanwhile", "reload the queue") from None
        return replace(item, status=row["status"], edited=row["edited"], reviewed_rating=new_rating,
                       reviewed_correction=new_correction, reviewer=row["reviewer"], reviewed_at=now)

    def audit(self, feedback_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Decisions, newest first (who, when, how, what changed)."""
        a = review_audit_table
        stmt = sa.select(a).order_by(a.c.time.desc(), a.c.id.desc()).limit(limit)
        if feedback_id is not None:
            stmt = stmt.where(a.c.feedback_id == feedback_id)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
        for r in rows:
            r["before"], r["after"] = json.loads(r["before"]), json.loads(r["after"])
        return rows

    def accepted_feedback(self, request_ids: list[str]) -> dict[str, list[FeedbackEntry]]:
        """{request id: its accepted feedback (as the reviewer let it through), oldest first}."""
        f, v = feedback_table, review_table
        out: dict[str, list[FeedbackEntry]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(request_ids), 500):
                stmt = (sa.select(f.c.request_id, f.c.time, v.c.rating, v.c.correction, f.c.comment)
                        .select_from(f.join(v, v.c.feedback_id == f.c.id))
                        .where(v.c.status == "accepted", f.c.request_id.in_(request_ids[start:start + 500]))
                        .order_by(f.c.time, f.c.id))
                for r in conn.execute(stmt):
                    out.setdefault(r.request_id, []).append(FeedbackEntry(*r))
        return out


def _decided_values(item: ReviewItem, action: str, correction: str | None,
                    rating: int | None) -> tuple[int | None, str | None]:
    """(rating, correction) the decision lets through; an edit changes what it names, the rest is the user's."""
    if action != "edit":
        if correction is not None or rating is not None:
            raise ReviewError(f"{action} takes no correction or rating", "use edit to change them")
        return item.rating, item.correction
    if correction is None and rating is None:
        raise ReviewError("an edit needs a correction and/or a rating", "pass --correction TEXT and/or --rating")
    if correction is not None and not correction.strip():
        raise ReviewError("an empty correction cannot be a training target", "write the answer, or reject the item")
    if rating is not None and (isinstance(rating, bool) or rating not in (-1, 0, 1)):
        raise ReviewError(f"rating must be -1, 0 or 1 (got {rating!r})", "pass -1 (bad), 0 or 1 (good)")
    return (item.rating if rating is None else rating), (item.correction if correction is None else correction)


def accepted_only(store: Any, requests: list[LoggedRequest]) -> tuple[list[LoggedRequest], int]:
    """The export's gate: `requests` with their feedback replaced by the ACCEPTED feedback only (an edit's values
    in place of the user's), and how many requests had feedback but none accepted (pending or rejected)."""
    accepted = ReviewQueue(store).accepted_feedback([r.request_id for r in requests if r.feedback])
    out, held_back = [], 0
    for req in requests:
        if not req.feedback:
            continue
        entries = accepted.get(req.request_id, [])
        if not entries:
            held_back += 1
            continue
        latest = entries[-1]
        out.append(replace(req, feedback=entries, rating=latest.rating, correction=latest.correction))
    return out, held_back
