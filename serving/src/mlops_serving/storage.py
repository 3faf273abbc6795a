"""Uploads' originals: from the outbox in PostgreSQL to the uploads bucket, after the answer.

A prediction commits its row and the original bytes together (uploads.insert)
and answers; the shipper here copies queued originals to their content-
addressed keys and then deletes them from the outbox. The object store is
thereby off the request path: an S3 PUT cost more than the prediction itself
(about 2 ms of a 5 ms request, and the store's own CPU besides).

The shipper lets bursts pass: while uploads keep arriving (the newest in the
outbox is younger than `quiet_seconds`, whichever web process or host took
it) it waits, unless the oldest queued original has waited
`max_delay_seconds`; then it ships the oldest batch by batch. When that is
not enough (load above what one thread can ship), the outbox is overdue and
each request ships two queued originals itself before it answers
(backpressure: its own share and one of the backlog), so the backlog shrinks
while load goes on, and requests slow down to the pace of the store. It also wakes every
`poll_seconds` for originals left by a crashed process or another web host.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import boto3
from botocore.config import Config as BotoConfig
from prometheus_client import Counter
from psycopg_pool import ConnectionPool

from . import uploads

log = logging.getLogger(__name__)


def content_key(data: bytes, extension: str) -> tuple[str, str]:
    """(sha256, key): the same bytes always get the same key."""
    sha = hashlib.sha256(data).hexdigest()
    return sha, uploads.object_key(sha, extension)


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
        failures: Counter | None = None,
    ):
        self.bucket = bucket
        self.pool = pool
        self.quiet_seconds = quiet_seconds
        self.max_delay_seconds = max_delay_seconds
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.failures = failures
        self.last_error: str | None = None
        # The oldest queued original has waited max_delay_seconds (see help_when_overdue).
        self.overdue = False
        # A session of its own: boto3's default session keeps the first credentials it
        # found for the life of the process, whatever the environment says later.
        self.s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"}),
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def queued(self) -> None:
        """An original was committed to the outbox (called by each prediction)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="upload-shipper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            try:
                self.drain()
            except Exception as error:  # the store or the database is down: retry later
                self._failed(error)
                self._stop.wait(self.poll_seconds)

    def _failed(self, error: Exception) -> None:
        """Count and log; requests stop helping until the shipper's next success."""
        if self.failures is not None:
            self.failures.inc()
        self.last_error = f"{error.__class__.__name__}: {str(error)[:200]}"
        log.warning("shipping originals failed (they stay queued): %s", self.last_error)

    def drain(self) -> int:
        """Ship queued originals until none is left; wait while a burst is on. Returns how many."""
        shipped = 0
        while not self._stop.is_set():
            if self._burst_on():
                time.sleep(self.quiet_seconds)
                continue
            count = self.ship_batch()
            shipped += count
            if count < self.batch:
                self.overdue = False
                break
        return shipped

    def help_when_overdue(self) -> None:
        """Called by each request after its insert: ship two originals when the outbox is behind.

        Not while the store fails (the shipper's last try): an outage must not slow requests.
        """
        if self.overdue and self.last_error is None:
            try:
                self.ship_batch(limit=2)
            except Exception as error:
                self._failed(error)

    def ship_batch(self, limit: int | None = None) -> int:
        """Copy the oldest queued originals to the bucket and drop them from the outbox."""
        with self.pool.connection() as conn, conn.transaction():
            batch = uploads.take_originals(conn, limit or self.batch)
            for original in batch:
                self.s3.put_object(
                    Bucket=self.bucket,
                    Key=original.object_key,
                    Body=original.data,
                    ContentType=original.content_type,
                )
            uploads.forget_originals(conn, [original.upload_id for original in batch])
        self.last_error = None
        return len(batch)

    def _burst_on(self) -> bool:
        with self.pool.connection() as conn:
            ages = uploads.outbox_ages(conn)
        if ages is None:
            self.overdue = False
            return False
        oldest, newest = ages
        self.overdue = oldest >= self.max_delay_seconds
        return newest < self.quiet_seconds and not self.overdue
