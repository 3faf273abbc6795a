"""Originals reach the bucket through the outbox: an outage or a crash loses none of them."""

from __future__ import annotations

import hashlib
import signal
import threading
import time

import psycopg
from mlops_uploads import object_key
from webapp import bucket, free_port, outbox_empty, start_web, wait_ready


def queued(env: dict) -> list[tuple[str, float]]:
    """(public upload id, seconds waited) of each original in the outbox, oldest first."""
    with psycopg.connect(env["MLOPS_DATABASE_URL"]) as conn:
        return conn.execute(
            "SELECT u.public_id::text, extract(epoch FROM now() - o.queued_at)::float8"
            " FROM upload_originals o JOIN uploads u ON u.id = o.upload_id ORDER BY o.upload_id"
        ).fetchall()


def test_an_original_waits_out_an_object_store_outage_and_a_crash(
    services, production_model, test_images, tmp_path
):
    # The object store is down for this process: nothing listens on its endpoint.
    down = start_web(
        services, tmp_path / "down", MLOPS_S3_ENDPOINT=f"http://127.0.0.1:{free_port()}"
    )
    try:
        wait_ready(down)
        data = test_images[7][0] + b"outage"  # bytes no other test sends
        answer = down.post("/api/v1/predict", files={"file": ("d.png", data)})
        assert answer.status_code == 200, answer.text  # the answer does not wait for the store
        upload_id = answer.json()["upload_id"]
        assert upload_id in [row[0] for row in queued(down.env)]
        deadline = time.monotonic() + 40
        while "mlops_upload_store_failures_total 0.0" in down.get("/metrics").text:
            assert time.monotonic() < deadline, "the shipper never tried the store"
            time.sleep(0.5)
        assert "mlops_upload_originals_waiting 0.0" not in down.get("/metrics").text
    finally:
        down.stop(signal.SIGKILL)  # a crash, not a clean stop
    assert upload_id in [row[0] for row in queued(down.env)]

    # A new process with the store reachable ships what the crashed one left.
    up = start_web(services, tmp_path / "up")
    try:
        started = time.monotonic()
        outbox_empty(up.env, timeout=60)
        print(
            f"\nthe crashed process's original was in the bucket"
            f" {time.monotonic() - started:.1f} s after a new start"
        )
        key = object_key(hashlib.sha256(data).hexdigest(), "png")
        assert bucket(services).get_object(Bucket="web-uploads", Key=key)["Body"].read() == data
    finally:
        up.stop()


def test_under_sustained_load_no_original_waits_much_longer_than_the_limit(
    services, production_model, test_images, tmp_path
):
    limit = 3
    web = start_web(services, tmp_path, MLOPS_STORE_MAX_DELAY_SECONDS=str(limit))
    stop_load = threading.Event()
    statuses: list[int] = []

    def keep_predicting(offset: int) -> None:
        i = offset
        while not stop_load.is_set():
            data = test_images[i % len(test_images)][0] + f"load{i}".encode()
            i += 4
            statuses.append(
                web.post("/api/v1/predict", files={"file": ("d.png", data)}).status_code
            )

    threads = [threading.Thread(target=keep_predicting, args=(k,)) for k in range(4)]
    oldest_seen = 0.0
    try:
        wait_ready(web)
        outbox_empty(web.env)
        for thread in threads:
            thread.start()
        ends = time.monotonic() + 4 * limit
        while time.monotonic() < ends:
            oldest_seen = max([oldest_seen] + [age for _, age in queued(web.env)[:1]])
            time.sleep(0.25)
        shipped_during_load = len(statuses) - len(queued(web.env))
    finally:
        stop_load.set()
        for thread in threads:
            thread.join()
        outbox_empty(web.env)
        web.stop()
    print(
        f"\n{len(statuses)} uploads in {4 * limit} s of load; {shipped_during_load} shipped"
        f" during it; the oldest waited at most {oldest_seen:.1f} s (limit {limit} s)"
    )
    assert statuses and set(statuses) == {200}
    assert shipped_during_load > 0
    assert oldest_seen < limit + 2
