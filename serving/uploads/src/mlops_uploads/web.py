"""The web app's queries: store a prediction, the uploader's feedback, reviews, listings,
and how the models did on the uploads (live accuracy).

Labels are only changed by who may change them, and only from what they saw:
feedback needs the token the uploader got with the prediction and is refused
once a reviewer decided; a review names the label the reviewer saw and is
refused when the row changed since (or the retrain flow has claimed it).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from uuid import UUID

import psycopg
from psycopg.rows import class_row

from . import PERSON_LABEL_SQL, REVIEW_STATES, UPLOAD_COLUMNS, Upload


class Outcome(enum.Enum):
    """What a label change came to; the web app maps each to an HTTP status."""

    DONE = "done"
    NOT_FOUND = "no such upload"
    FORBIDDEN = "the feedback token does not belong to this upload"
    DECIDED = "a reviewer has already decided on this upload"
    CHANGED = "the upload changed since you saw it (or is part of a dataset version): reload"


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _public_id(value: str) -> UUID | None:
    try:
        return UUID(value)
    except (TypeError, ValueError, AttributeError):
        return None


def insert(
    conn: psycopg.Connection,
    *,
    key: str,
    sha256: str,
    content_type: str,
    original: bytes,
    model_input: bytes,
    predicted_label: int,
    probabilities: Sequence[float],
    model_version: str,
    feedback_token: str,
    shadow: tuple[str, int] | None = None,
) -> str:
    """The row and its original (queued for the object store), in one statement.

    shadow: (version, digit) of the candidate that predicted beside production.
    Returns the upload's public id.
    """
    shadow_version, shadow_label = shadow or (None, None)
    row = conn.execute(
        "WITH upload AS ("
        " INSERT INTO uploads (object_key, sha256, content_type, size_bytes, model_input,"
        " predicted_label, probabilities, model_version, feedback_token_sha256,"
        " shadow_model_version, shadow_predicted_label)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s::real[], %s, %s, %s, %s) RETURNING id, public_id),"
        " queued AS (INSERT INTO upload_originals (upload_id, data) SELECT id, %s FROM upload)"
        " SELECT public_id::text FROM upload",
        (
            key,
            sha256,
            content_type,
            len(original),
            model_input,
            predicted_label,
            # An array literal: psycopg's list adapter inspects every element each time.
            "{" + ",".join(f"{p:.9g}" for p in probabilities) + "}",
            model_version,
            token_digest(feedback_token),
            shadow_version,
            shadow_label,
            original,
        ),
    ).fetchone()
    return row[0]


def get(conn: psycopg.Connection, public_id: str) -> Upload | None:
    uid = _public_id(public_id)
    if uid is None:
        return None
    with conn.cursor(row_factory=class_row(Upload)) as cursor:
        return cursor.execute(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE public_id = %s",  # noqa: S608 (fixed text)
            (uid,),
        ).fetchone()


def set_feedback(conn: psycopg.Connection, public_id: str, token: str, label: int) -> Outcome:
    """The uploader's label; only with the upload's feedback token, only while pending."""
    uid = _public_id(public_id)
    if uid is None:
        return Outcome.NOT_FOUND
    done = conn.execute(
        "UPDATE uploads SET user_label = %s, feedback_at = now()"
        " WHERE public_id = %s AND feedback_token_sha256 = %s AND review_status = 'pending'"
        " AND used_in_version IS NULL",
        (label, uid, token_digest(token)),
    ).rowcount
    if done:
        return Outcome.DONE
    row = conn.execute(
        "SELECT feedback_token_sha256 = %s, review_status FROM uploads WHERE public_id = %s",
        (token_digest(token), uid),
    ).fetchone()
    if row is None:
        return Outcome.NOT_FOUND
    return Outcome.DECIDED if row[0] else Outcome.FORBIDDEN


REVIEW_SQL = {
    "confirm": "review_status = 'confirmed', reviewed_label = %(seen)s",
    "correct": "review_status = 'corrected', reviewed_label = %(label)s",
    "reject": "review_status = 'rejected', reviewed_label = NULL",
}


def review(
    conn: psycopg.Connection,
    public_id: str,
    action: str,
    reviewer: str,
    seen_label: int,
    label: int | None = None,
) -> Outcome:
    """confirm the label the reviewer saw, correct it to `label`, or reject the upload.

    Refused (CHANGED) when the label shown now is not `seen_label`, or when the
    upload is in a dataset version or claimed for one.
    """
    if action not in REVIEW_SQL:
        raise ValueError(f"unknown review action {action!r}")
    if action == "correct" and (label is None or not 0 <= label <= 9):
        raise ValueError("correct needs a label from 0 to 9")
    uid = _public_id(public_id)
    if uid is None:
        return Outcome.NOT_FOUND
    done = conn.execute(
        f"UPDATE uploads SET {REVIEW_SQL[action]}, reviewer = %(reviewer)s,"  # noqa: S608 (fixed)
        " reviewed_at = now()"
        " WHERE public_id = %(id)s AND used_in_version IS NULL AND claimed_by IS NULL"
        " AND COALESCE(user_label, predicted_label) = %(seen)s",
        {"seen": seen_label, "label": label, "reviewer": reviewer, "id": uid},
    ).rowcount
    if done:
        return Outcome.DONE
    exists = conn.execute("SELECT 1 FROM uploads WHERE public_id = %s", (uid,)).fetchone()
    return Outcome.CHANGED if exists else Outcome.NOT_FOUND


def listing(
    conn: psycopg.Connection, status: str | None = None, limit: int = 50, offset: int = 0
) -> list[Upload]:
    where, params = ("WHERE review_status = %s", [status]) if status else ("", [])
    with conn.cursor(row_factory=class_row(Upload)) as cursor:
        return cursor.execute(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads {where}"  # noqa: S608 (fixed text)
            " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
            [*params, limit, offset],
        ).fetchall()


def counts(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT review_status, count(*) FROM uploads GROUP BY review_status")
    found = dict(rows.fetchall())
    result = {state: found.get(state, 0) for state in REVIEW_STATES}
    with_feedback, used = conn.execute(
        "SELECT count(*) FILTER (WHERE user_label IS NOT NULL),"
        " count(*) FILTER (WHERE used_in_version IS NOT NULL) FROM uploads"
    ).fetchone()
    result["with_feedback"], result["used"] = with_feedback, used
    return result


@dataclass(frozen=True)
class DayOfVersion:
    """One model version's predictions on one day, and how many of them were right."""

    version: str
    day: date
    predictions: int
    labelled: int  # with a label from a person: a reviewer's, else the uploader's feedback
    right: int  # of the labelled, those the model predicted


@dataclass(frozen=True)
class Quality:
    """How the models did on the users' uploads over the last `days` days."""

    days: int
    per_version_day: list[DayOfVersion]
    # Reviewed uploads (confirmed or corrected): [true digit][predicted digit]
    confusion: list[list[int]]
    backlog: int  # uploads waiting for a review


def quality(conn: psycopg.Connection, days: int = 30) -> Quality:
    """Live accuracy per model version and day, the reviewed confusion matrix, the backlog."""
    rows = conn.execute(
        "SELECT model_version, created_at::date, count(*), count(label),"  # noqa: S608 (fixed)
        " count(*) FILTER (WHERE label = predicted_label)"
        f" FROM (SELECT model_version, created_at, predicted_label, {PERSON_LABEL_SQL} AS label"
        "       FROM uploads WHERE created_at >= now() - make_interval(days => %s)) AS recent"
        " GROUP BY 1, 2 ORDER BY 2, 1",
        (days,),
    ).fetchall()
    confusion = [[0] * 10 for _ in range(10)]
    for true, predicted, count in conn.execute(
        "SELECT reviewed_label, predicted_label, count(*) FROM uploads"
        " WHERE review_status IN ('confirmed', 'corrected')"
        " AND reviewed_at >= now() - make_interval(days => %s) GROUP BY 1, 2",
        (days,),
    ):
        confusion[true][predicted] = count
    backlog = conn.execute(
        "SELECT count(*) FROM uploads WHERE review_status = 'pending' AND used_in_version IS NULL"
    ).fetchone()[0]
    return Quality(days, [DayOfVersion(*row) for row in rows], confusion, backlog)
