"""The retrain flow's queries: claim the trainable uploads, then mark them used or let go.

A claim is a state, not a lock: it is taken and given up in short
transactions, so nothing waits on rows while the flow spends minutes in git
and DVC. While an upload is claimed, reviews of it are refused (the label it
trains with cannot change under the flow); a claim older than `stale_after`
(a crashed run) may be taken over.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import psycopg
from psycopg.rows import class_row

from . import UPLOAD_COLUMNS, Upload


def claim(
    conn: psycopg.Connection, claimant: str, stale_after: timedelta = timedelta(hours=2)
) -> list[Upload]:
    """Confirmed or corrected uploads no dataset version holds yet, now claimed by `claimant`."""
    with conn.cursor(row_factory=class_row(Upload)) as cursor:
        return cursor.execute(
            "UPDATE uploads SET claimed_by = %s, claimed_at = now()"  # noqa: S608 (fixed text)
            " WHERE review_status IN ('confirmed', 'corrected') AND used_in_version IS NULL"
            " AND (claimed_by IS NULL OR claimed_by = %s OR claimed_at < now() - %s)"
            f" RETURNING {UPLOAD_COLUMNS}",
            (claimant, claimant, stale_after),
        ).fetchall()


def mark_used(conn: psycopg.Connection, claimant: str, ids: Sequence[int], version: str) -> int:
    """The claimed uploads are in dataset `version` now; the claim ends."""
    return conn.execute(
        "UPDATE uploads SET used_in_version = %s, used_at = now(),"
        " claimed_by = NULL, claimed_at = NULL WHERE claimed_by = %s AND id = ANY(%s)",
        (version, claimant, list(ids)),
    ).rowcount


def release(conn: psycopg.Connection, claimant: str) -> int:
    """Give the claimed uploads back (the run failed before publishing)."""
    return conn.execute(
        "UPDATE uploads SET claimed_by = NULL, claimed_at = NULL WHERE claimed_by = %s",
        (claimant,),
    ).rowcount
