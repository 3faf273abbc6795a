"""The uploads table: the one definition the web app and the retrain flow share.

Every accepted upload is a row: the original image goes to the uploads bucket
under a content-addressed key, the row holds the 28x28 PNG the model saw
(what retraining uses, a few hundred bytes), the model's prediction and
probabilities, the model version, the user's label, the review decision,
and (once the retrain flow took it) the dataset version it went into.

Review states: pending -> confirmed (the label is right) | corrected (a data
scientist set the right label) | rejected (not a usable digit). The label a
confirmed or corrected upload trains with is `reviewed_label`.

The original is written to the object store after the answer, not before:
the request commits the row and the original bytes (table upload_originals,
an outbox) in one statement, and a background shipper (storage.py) copies
them to the bucket and deletes them from the outbox. A crash at any point
loses nothing: an original stays in the outbox until its object exists, and
a second copy of the same bytes lands under the same key.

Schema migrations are numbered and applied in order by migrate() (the web
app runs it at start-up); applied numbers are kept in schema_migrations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row

REVIEW_STATES = ("pending", "confirmed", "corrected", "rejected")
TRAINABLE_STATES = ("confirmed", "corrected")
# The database role the retrain flow connects as (created by the postgresql role).
WORKER_ROLE = "mlops_worker"

MIGRATIONS: list[str] = [
    # 1: the uploads table
    """
    CREATE TABLE uploads (
        id               bigserial PRIMARY KEY,
        object_key       text NOT NULL,
        sha256           char(64) NOT NULL,
        content_type     text NOT NULL,
        size_bytes       integer NOT NULL CHECK (size_bytes > 0),
        model_input      bytea NOT NULL,
        predicted_label  smallint NOT NULL CHECK (predicted_label BETWEEN 0 AND 9),
        probabilities    real[] NOT NULL CHECK (cardinality(probabilities) = 10),
        model_version    text NOT NULL,
        user_label       smallint CHECK (user_label BETWEEN 0 AND 9),
        feedback_at      timestamptz,
        review_status    text NOT NULL DEFAULT 'pending'
                         CHECK (review_status IN ('pending', 'confirmed', 'corrected', 'rejected')),
        reviewed_label   smallint CHECK (reviewed_label BETWEEN 0 AND 9),
        reviewer         text,
        reviewed_at      timestamptz,
        used_in_version  text,
        used_at          timestamptz,
        created_at       timestamptz NOT NULL DEFAULT now(),
        CHECK (review_status NOT IN ('confirmed', 'corrected') OR reviewed_label IS NOT NULL)
    );
    CREATE INDEX uploads_review ON uploads (review_status, used_in_version);
    CREATE INDEX uploads_created ON uploads (created_at DESC);
    """,
    # 2: the retrain flow reads trainable uploads and marks them used, nothing else
    f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WORKER_ROLE}') THEN
            GRANT SELECT ON uploads TO {WORKER_ROLE};
            GRANT UPDATE (used_in_version, used_at) ON uploads TO {WORKER_ROLE};
        END IF;
    END
    $$;
    """,
    # 3: the outbox of originals not in the object store yet (the web app's alone)
    """
    CREATE TABLE upload_originals (
        upload_id  bigint PRIMARY KEY REFERENCES uploads (id) ON DELETE CASCADE,
        data       bytea NOT NULL,
        queued_at  timestamptz NOT NULL DEFAULT now()
    );
    """,
]


@dataclass(frozen=True)
class Upload:
    id: int
    object_key: str
    sha256: str
    content_type: str
    size_bytes: int
    model_input: bytes
    predicted_label: int
    probabilities: list[float]
    model_version: str
    user_label: int | None
    feedback_at: datetime | None
    review_status: str
    reviewed_label: int | None
    reviewer: str | None
    reviewed_at: datetime | None
    used_in_version: str | None
    used_at: datetime | None
    created_at: datetime


def object_key(sha256: str, extension: str) -> str:
    """Content-addressed: the same bytes always land under the same key."""
    return f"uploads/{sha256[:2]}/{sha256}.{extension}"


def migrate(conn: psycopg.Connection) -> list[int]:
    """Apply the migrations not applied yet (under a lock: safe with several web processes)."""
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('mlops_uploads_schema'))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for number, sql in enumerate(MIGRATIONS, start=1):
            if number not in done:
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
                applied_now.append(number)
    return applied_now


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
) -> int:
    """The row and its original (queued for the object store), in one statement."""
    row = conn.execute(
        "WITH upload AS ("
        " INSERT INTO uploads (object_key, sha256, content_type, size_bytes, model_input,"
        " predicted_label, probabilities, model_version)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s::real[], %s) RETURNING id)"
        " INSERT INTO upload_originals (upload_id, data) SELECT id, %s FROM upload"
        " RETURNING upload_id",
        (
            key,
            sha256,
            content_type,
            len(original),
            model_input,
            predicted_label,
            # An array literal: psycopg's list adapter inspected every element on each
            # insert, a tenth of the request's time in the interpreter.
            "{" + ",".join(f"{p:.9g}" for p in probabilities) + "}",
            model_version,
            original,
        ),
    ).fetchone()
    return row[0]


@dataclass(frozen=True)
class QueuedOriginal:
    upload_id: int
    object_key: str
    content_type: str
    data: bytes


def take_originals(conn: psycopg.Connection, limit: int) -> list[QueuedOriginal]:
    """The oldest originals waiting for the object store, locked for this transaction.

    SKIP LOCKED: several web processes ship side by side, never the same one twice at once.
    """
    with conn.cursor(row_factory=class_row(QueuedOriginal)) as cursor:
        return cursor.execute(
            "SELECT o.upload_id, u.object_key, u.content_type, o.data"
            " FROM upload_originals o JOIN uploads u ON u.id = o.upload_id"
            " ORDER BY o.upload_id LIMIT %s FOR UPDATE OF o SKIP LOCKED",
            (limit,),
        ).fetchall()


def forget_originals(conn: psycopg.Connection, upload_ids: Sequence[int]) -> None:
    """Their objects are in the bucket now."""
    conn.execute("DELETE FROM upload_originals WHERE upload_id = ANY(%s)", (list(upload_ids),))


def originals_waiting(conn: psycopg.Connection) -> tuple[int, float | None]:
    """How many originals wait for the object store, and the oldest one's age in seconds."""
    count, oldest = conn.execute(
        "SELECT count(*), extract(epoch FROM now() - min(queued_at))::float8 FROM upload_originals"
    ).fetchone()
    return count, oldest


def outbox_ages(conn: psycopg.Connection) -> tuple[float, float] | None:
    """(oldest, newest) age in seconds of the queued originals, None when none waits.

    Two index lookups, cheap enough to ask several times a second.
    """
    row = conn.execute(
        "SELECT extract(epoch FROM now() - o.queued_at)::float8,"
        " extract(epoch FROM now() - n.queued_at)::float8"
        " FROM (SELECT queued_at FROM upload_originals ORDER BY upload_id LIMIT 1) o,"
        " (SELECT queued_at FROM upload_originals ORDER BY upload_id DESC LIMIT 1) n"
    ).fetchone()
    return None if row is None else (row[0], row[1])


def get(conn: psycopg.Connection, upload_id: int) -> Upload | None:
    with conn.cursor(row_factory=class_row(Upload)) as cursor:
        return cursor.execute("SELECT * FROM uploads WHERE id = %s", (upload_id,)).fetchone()


def set_feedback(conn: psycopg.Connection, upload_id: int, label: int) -> bool:
    """The user's label ('correct' sends the predicted one). False when there is no such upload."""
    result = conn.execute(
        "UPDATE uploads SET user_label = %s, feedback_at = now() WHERE id = %s", (label, upload_id)
    )
    return result.rowcount == 1


def review(
    conn: psycopg.Connection, upload_id: int, action: str, reviewer: str, label: int | None = None
) -> bool:
    """confirm (keep the user's label, else the prediction), correct (set label), reject."""
    if action == "confirm":
        sql = (
            "UPDATE uploads SET review_status = 'confirmed',"
            " reviewed_label = COALESCE(user_label, predicted_label),"
            " reviewer = %s, reviewed_at = now() WHERE id = %s AND used_in_version IS NULL"
        )
        params: tuple = (reviewer, upload_id)
    elif action == "correct":
        if label is None or not 0 <= label <= 9:
            raise ValueError("correct needs a label from 0 to 9")
        sql = (
            "UPDATE uploads SET review_status = 'corrected', reviewed_label = %s,"
            " reviewer = %s, reviewed_at = now() WHERE id = %s AND used_in_version IS NULL"
        )
        params = (label, reviewer, upload_id)
    elif action == "reject":
        sql = (
            "UPDATE uploads SET review_status = 'rejected', reviewed_label = NULL,"
            " reviewer = %s, reviewed_at = now() WHERE id = %s AND used_in_version IS NULL"
        )
        params = (reviewer, upload_id)
    else:
        raise ValueError(f"unknown review action {action!r}")
    return conn.execute(sql, params).rowcount == 1


def listing(
    conn: psycopg.Connection, status: str | None = None, limit: int = 50, offset: int = 0
) -> list[Upload]:
    where, params = ("WHERE review_status = %s", [status]) if status else ("", [])
    with conn.cursor(row_factory=class_row(Upload)) as cursor:
        return cursor.execute(
            f"SELECT * FROM uploads {where} ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",  # noqa: S608 (fixed text)
            [*params, limit, offset],
        ).fetchall()


def counts(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT review_status, count(*) FROM uploads GROUP BY review_status")
    found = dict(rows.fetchall())
    result = {state: found.get(state, 0) for state in REVIEW_STATES}
    result["with_feedback"] = conn.execute(
        "SELECT count(*) FROM uploads WHERE user_label IS NOT NULL"
    ).fetchone()[0]
    result["used"] = conn.execute(
        "SELECT count(*) FROM uploads WHERE used_in_version IS NOT NULL"
    ).fetchone()[0]
    return result


def trainable_unused(conn: psycopg.Connection) -> list[Upload]:
    """Confirmed or corrected uploads no dataset version holds yet, locked for this transaction."""
    with conn.cursor(row_factory=class_row(Upload)) as cursor:
        return cursor.execute(
            "SELECT * FROM uploads WHERE review_status IN ('confirmed', 'corrected')"
            " AND used_in_version IS NULL ORDER BY id FOR UPDATE SKIP LOCKED"
        ).fetchall()


def mark_used(conn: psycopg.Connection, ids: Sequence[int], version: str) -> int:
    result = conn.execute(
        "UPDATE uploads SET used_in_version = %s, used_at = now() WHERE id = ANY(%s)",
        (version, list(ids)),
    )
    return result.rowcount
