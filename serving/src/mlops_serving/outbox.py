"""Uploads' originals: from the outbox in PostgreSQL to the uploads bucket, after the answer.

A prediction commits its row and the original bytes together (mlops_uploads.
web.insert) and answers; the shipper here copies queued originals to their
content-addressed keys and then deletes them from the outbox. The object store
is thereby off the request path: a crash or an outage loses nothing (an
original stays queued until its object exists; a second copy of the same
bytes lands under the same key).

The shipper lets bursts pass: while uploads keep arriving (the newest in the
outbox is younger than `quiet_seconds`, whichever web process or host took
it) it waits, unless the oldest queued original has waited
`max_delay_seconds`; then it ships the oldest batch by batch. When that is not
enough, the outbox is overdue and each request ships two queued originals
itself before it answers (backpressure), with a client that gives up after
about a second. A failure (the store down or hung) opens a breaker: requests
stop helping for `breaker_seconds`, while the shipper keeps trying. When more
than `max_bytes` wait, new predictions are refused with 503 (nothing already
accepted is lost). The shipper also wakes every `poll_seconds` for originals
left by a crashed process or another web host.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import boto3
import psycopg
from botocore import handlers as botocore_handlers
from botocore.config import Config as BotoConfig
from mlops_uploads import object_key
from prometheus_client import Counter
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)


def content_key(data: bytes, extension: str) -> tuple[str, str]:
    """(sha256, key): the same bytes always get the same key."""
    sha = hashlib.sha256(data).hexdigest()
    return sha, object_key(sha, extension)


# --- the outbox table (the web app's alone) --------------------------------


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


def waiting(conn: psycopg.Connection) -> tuple[int, int, float | None]:
    """How many originals wait, their bytes, and the oldest one's age in seconds."""
    count, size, oldest = conn.execute(
        "SELECT count(*), coalesce(sum(octet_length(data)), 0),"
        " extract(epoch FROM now() - min(queued_at))::float8 FROM upload_originals"
    ).fetchone()
    return count, size, oldest


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


# --- the shipper ------------------------------------------------------------


def s3_client(endpoint: str, connect: float, read: float, attempts: int, expect_continue=True):
    """An S3 client that tries `attempts` times in all.

    Without `expect_continue`, a PUT sends its body at once instead of first
    waiting up to a second for "100 Continue": with a hung store that wait came
    on top of the read timeout (measured: 2.0 s instead of 1.0 s per try).
    """
    # A session of its own: boto3's default session keeps the first credentials it
    # found for the life of the process, whatever the environment says later.
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        config=BotoConfig(
            connect_timeout=connect,
            read_timeout=read,
            # total_max_attempts counts the first try; max_attempts would not.
            retries={"total_max_attempts": attempts, "mode": "standard"},
        ),
    )
    if not expect_continue:
        client.meta.events.unregister("before-call.s3", botocore_handlers.add_expect_header)
    return client


class UploadShipper:
    def __init__(
        self,
        endpoint: str,
        bucket: str,
        pool: ConnectionPool,
        *,
        quiet_seconds: float = 0.2,
        max_delay_seconds: float = 30.0,
        poll_seconds: float = 5.0,
        batch: int = 8,  # at most 8 originals (up to 5 MB each by default) in memory at once
        max_bytes: int = 1024**3,
        breaker_seconds: float = 10.0,
        failures: Counter | None = None,
    ):
        self.bucket = bucket
        self.pool = pool
        self.quiet_seconds = quiet_seconds
        self.max_delay_seconds = max_delay_seconds
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.max_bytes = max_bytes
        self.breaker_seconds = breaker_seconds
        self.failures = failures
        self.last_error: str | None = None
        # The oldest queued original has waited max_delay_seconds (see help_when_overdue).
        self.overdue = False
        # Requests do not help before this (monotonic) time: the store failed or hung.
        self.broken_until = 0.0
        self.waiting_bytes = 0
        self._bytes_read_at = float("-inf")
        self.s3 = s3_client(endpoint, connect=2, read=20, attempts=3)
        # What a request uses when it helps: one try, about a second at most.
        self.s3_in_request = s3_client(
            endpoint, connect=0.5, read=1, attempts=1, expect_continue=False
        )
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def queued(self) -> None:
        """An original was committed to the outbox (called by each prediction)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="upload-shipper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:  # a daemon thread: it ends with the process
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            try:
                self.drain()
            except Exception as error:  # the store or the database is down: retry later
                self._failed(error)
                time.sleep(self.poll_seconds)

    def _failed(self, error: Exception) -> None:
        """Count, log, and stop requests from helping for a while."""
        if self.failures is not None:
            self.failures.inc()
        self.broken_until = time.monotonic() + self.breaker_seconds
        self.last_error = f"{error.__class__.__name__}: {str(error)[:200]}"
        log.warning("shipping originals failed (they stay queued): %s", self.last_error)

    def drain(self) -> int:
        """Ship queued originals until none is left; wait while a burst is on. Returns how many."""
        shipped = 0
        while True:
            if self._burst_on():
                time.sleep(self.quiet_seconds)
                continue
            count = self.ship_batch()
            shipped += count
            if count < self.batch:
                self.overdue = False
                return shipped

    def help_when_overdue(self) -> None:
        """Called by each request after its insert: ship two originals when the outbox is behind.

        Not while the breaker is open: an outage or a hung store must not slow requests.
        """
        if self.overdue and time.monotonic() >= self.broken_until:
            try:
                self.ship_batch(limit=2, s3=self.s3_in_request)
            except Exception as error:
                self._failed(error)

    def full(self) -> bool:
        """More than max_bytes wait for the store (read at most once a second)."""
        now = time.monotonic()
        if now - self._bytes_read_at >= 1.0:
            self._bytes_read_at = now
            with self.pool.connection() as conn:
                self.waiting_bytes = waiting(conn)[1]
        return self.waiting_bytes > self.max_bytes

    def ship_batch(self, limit: int | None = None, s3=None) -> int:
        """Copy the oldest queued originals to the bucket and drop them from the outbox."""
        s3 = s3 or self.s3
        with self.pool.connection() as conn, conn.transaction():
            batch = take_originals(conn, limit or self.batch)
            for original in batch:
                s3.put_object(
                    Bucket=self.bucket,
                    Key=original.object_key,
                    Body=original.data,
                    ContentType=original.content_type,
                )
            forget_originals(conn, [original.upload_id for original in batch])
        if batch:
            self.last_error = None
            self.broken_until = 0.0
        return len(batch)

    def _burst_on(self) -> bool:
        with self.pool.connection() as conn:
            ages = outbox_ages(conn)
        if ages is None:
            self.overdue = False
            return False
        oldest, newest = ages
        self.overdue = oldest >= self.max_delay_seconds
        return newest < self.quiet_seconds and not self.overdue
