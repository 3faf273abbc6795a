"""The JSON API and the probes, over HTTP to waitress, against the real services."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import re
import struct
import time
import zlib
from urllib.parse import urlsplit

import psycopg
import pytest
from mlops_uploads import object_key
from PIL import Image
from webapp import bucket, outbox_empty, samples


def stored(web, services) -> tuple[int, frozenset[str]]:
    """Rows in the uploads table and the sha256 of each object in the uploads bucket, once
    the outbox is empty (keys are content addresses: `uploads/ab/<sha256>.<ext>`)."""
    outbox_empty(web.env)
    with psycopg.connect(web.env["MLOPS_DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
    pages = bucket(services).get_paginator("list_objects_v2").paginate(Bucket="web-uploads")
    objects = frozenset(
        item["Key"].rsplit("/", 1)[-1].split(".", 1)[0]
        for page in pages
        for item in page.get("Contents", [])
    )
    return rows, objects


def fresh(data: bytes, tag: str) -> bytes:
    """The same image under a new content address (a PNG ignores what follows its end)."""
    return data + tag.encode()


def test_the_test_set_through_the_api_scores_the_models_own_accuracy(
    web, test_images, production_model
):
    correct = 0
    for data, label in test_images:
        body = web.predict(data)
        assert body["model_version"] == production_model.version
        assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-3
        correct += body["digit"] == label
    accuracy = correct / len(test_images)
    registered = float(production_model.tags["test_accuracy"])
    print(
        f"\n{len(test_images)} test images through /api/v1/predict: {accuracy:.4f}"
        f" (registered: {registered:.4f})"
    )
    assert abs(accuracy - registered) <= 0.005


def test_predict_accepts_base64_json_and_only_the_uploader_gives_feedback(
    web, services, test_images
):
    data, label = test_images[0]
    data = fresh(data, "base64")
    before = stored(web, services)
    answer = web.post("/api/v1/predict", json={"image": base64.b64encode(data).decode()})
    assert answer.status_code == 200, answer.text
    prediction = answer.json()
    upload_id, token = prediction["upload_id"], prediction["feedback_token"]
    # One row (holding the 28x28 input the model saw) and, once shipped, one object: the
    # original, under its content address.
    sha = hashlib.sha256(data).hexdigest()
    assert stored(web, services) == (before[0] + 1, before[1] | {sha})
    assert sha not in before[1]
    key = object_key(sha, "png")
    assert bucket(services).get_object(Bucket="web-uploads", Key=key)["Body"].read() == data
    with psycopg.connect(web.env["MLOPS_DATABASE_URL"]) as conn:
        model_input = conn.execute(
            "SELECT model_input FROM uploads WHERE public_id = %s", (upload_id,)
        ).fetchone()[0]
    seen = Image.open(io.BytesIO(model_input))
    assert (seen.format, seen.size, seen.mode) == ("PNG", (28, 28), "L")

    feedback = {"upload_id": upload_id, "label": label}
    assert web.post("/api/v1/feedback", json=feedback).status_code == 400  # no token
    wrong = web.post("/api/v1/feedback", json={**feedback, "feedback_token": "guessed"})
    assert wrong.status_code == 403
    right = web.post("/api/v1/feedback", json={**feedback, "feedback_token": token})
    assert right.json() == {"upload_id": upload_id, "user_label": label}
    with psycopg.connect(web.env["MLOPS_DATABASE_URL"]) as conn:
        user_label, status = conn.execute(
            "SELECT user_label, review_status FROM uploads WHERE public_id = %s", (upload_id,)
        ).fetchone()
    assert (user_label, status) == (label, "pending")


def review(web, upload_id: str, action: str, seen: int, **extra):
    return web.post(
        "/api/v1/review",
        json={"upload_id": upload_id, "action": action, "seen_label": seen, **extra},
        auth=web.reviewer,
    )


def test_review_needs_a_reviewer_and_decides_on_what_the_reviewer_saw(web, test_images):
    prediction = web.predict(fresh(test_images[1][0], "review"))
    upload_id, predicted = prediction["upload_id"], prediction["digit"]
    anonymous = web.post(
        "/api/v1/review",
        json={"upload_id": upload_id, "action": "confirm", "seen_label": predicted},
    )
    assert anonymous.status_code == 401
    wrong = web.post(
        "/api/v1/review",
        json={"upload_id": upload_id, "action": "confirm", "seen_label": predicted},
        auth=("reviewer", "nope"),
    )
    assert wrong.status_code == 401

    # The reviewer saw the model's label; the uploader then said something else.
    other = (predicted + 1) % 10
    web.post(
        "/api/v1/feedback",
        json={
            "upload_id": upload_id,
            "label": other,
            "feedback_token": prediction["feedback_token"],
        },
    ).raise_for_status()
    stale = review(web, upload_id, "confirm", seen=predicted)
    assert stale.status_code == 409 and "changed since you saw it" in stale.json()["error"]
    assert review(web, upload_id, "correct", seen=other).status_code == 400  # no label
    answer = review(web, upload_id, "correct", seen=other, label=4)
    assert answer.json() == {
        "upload_id": upload_id,
        "review_status": "corrected",
        "reviewed_label": 4,
        "reviewer": "reviewer",
    }
    # A decision stands against the uploader's later feedback.
    late = web.post(
        "/api/v1/feedback",
        json={"upload_id": upload_id, "label": 2, "feedback_token": prediction["feedback_token"]},
    )
    assert late.status_code == 409


def test_upload_ids_cannot_be_guessed(web, test_images):
    prediction = web.predict(fresh(test_images[2][0], "ids"))
    public_id = prediction["upload_id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", public_id)
    assert web.get(f"/result/{public_id}").status_code == 200
    assert web.get(f"/uploads/{public_id}/28x28.png").status_code == 200
    for guess in ("1", "2", "00000000-0000-4000-8000-000000000000"):
        assert web.get(f"/result/{guess}").status_code == 404
        assert web.get(f"/uploads/{guess}/28x28.png").status_code == 404


def test_probes_say_what_state_the_app_is_in_and_nothing_internal(web, production_model):
    assert web.get("/healthz").json() == {"status": "ok"}
    ready = web.get("/readyz").json()
    assert ready == {
        "status": "ready",
        "model_version": production_model.version,
        "data_version": production_model.tags["data_version"],
        "shadow_version": None,  # no version holds `candidate`
        "mlflow": "reachable",
        "database": "ok",
    }
    status = web.get("/status").text
    assert "127.0.0.1" not in status and "Error" not in status


def test_metrics_count_requests_with_labels_from_closed_sets(web, production_model, test_images):
    web.predict(test_images[0][0])  # one prediction at least, whichever tests ran before

    def series() -> set[str]:
        text = web.get("/metrics").text
        lines = (line.rsplit(" ", 1)[0] for line in text.splitlines())
        # /metrics itself is counted too: its own series may appear between two reads.
        return {name for name in lines if name.startswith("mlops_") and "/metrics" not in name}

    def invented(numbers: range) -> None:
        for i in numbers:
            conn = http.client.HTTPConnection(urlsplit(web.url).netloc, timeout=10)
            conn.request(f"INVENT{i}", "/api/v1/predict")
            conn.getresponse().read()
            conn.close()

    invented(range(5))  # whatever series an unknown method makes, it makes now
    before = series()
    invented(range(5, 55))
    after = series()
    assert after == before, after - before  # 50 more methods, not one more series
    assert not any("INVENT" in name for name in after)
    assert any('method="other"' in name for name in after)
    text = web.get("/metrics").text
    assert (
        'mlops_http_requests_total{endpoint="/api/v1/predict",method="POST",status="200"}' in text
    )
    assert "mlops_http_request_duration_seconds_bucket" in text
    assert "mlops_predictions_total{digit=" in text
    assert f'version="{production_model.version}"' in text
    assert "mlops_upload_originals_waiting " in text and "mlops_upload_originals_bytes " in text


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size (a decompression bomb's header) and has almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (200, 200), 255).save(buffer, format="PNG")
    return buffer.getvalue()[:-40]


BAD_INPUTS = {
    "not an image": ("multipart", b"hello, this is text", 400),
    "truncated file": ("multipart", truncated_png(), 400),
    "zero bytes": ("multipart", b"", 400),
    "over the size limit": ("multipart", b"\0" * (5 * 1024 * 1024 + 10), 413),
    "over the pixel limit": ("multipart", png_header_only(20000, 20000), 413),
    "a blank image": ("multipart", None, 422),
    "missing field": ("form-without-file", b"", 400),
    "json without image": ("json", {"picture": "x"}, 400),
    "json with bad base64": ("json", {"image": "!!!not base64!!!"}, 400),
    "not json at all": ("raw", b"\x00\x01", 400),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_json_error_and_stores_nothing(web, services, case):
    kind, payload, status = BAD_INPUTS[case]
    if payload is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (240, 240, 240)).save(buffer, format="PNG")
        payload = buffer.getvalue()
    before = stored(web, services)
    if kind == "multipart":
        answer = web.post("/api/v1/predict", files={"file": ("x.png", payload)})
    elif kind == "form-without-file":
        answer = web.post("/api/v1/predict", files={"other": ("x.png", b"123")})
    elif kind == "json":
        answer = web.post("/api/v1/predict", json=payload)
    else:
        answer = web.post(
            "/api/v1/predict", data=payload, headers={"Content-Type": "application/octet-stream"}
        )
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"]
    assert stored(web, services) == before


def test_a_huge_body_is_refused_without_being_read(web):
    """waitress stops reading at an upload's size: a chunked body of 600 MB, or a 1 GB claim."""
    sent = 0

    def chunks():
        nonlocal sent
        block = b"\0" * (1024 * 1024)
        for _ in range(600):
            sent += len(block)
            yield block

    started = time.monotonic()
    try:
        answer = web.post(
            "/api/v1/predict", data=chunks(), headers={"Content-Type": "application/octet-stream"}
        )
        status = answer.status_code
    except Exception:  # the server closed the connection on the rest of the body
        status = 413
    seconds = time.monotonic() - started
    print(f"\n600 MB chunked body: {status} after {sent / 2**20:.0f} MB sent, {seconds:.2f} s")
    assert status == 413
    assert sent < 50 * 1024 * 1024, "the server read far more than an upload can be"

    conn = http.client.HTTPConnection(urlsplit(web.url).netloc, timeout=10)
    conn.putrequest("POST", "/api/v1/predict")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(2**30))
    conn.endheaders()
    answer = conn.getresponse()
    # waitress answers this one itself, in the API's JSON like the app.
    assert answer.status == 413
    assert answer.getheader("Content-Type") == "application/json"
    assert json.loads(answer.read())["error"].startswith("Request Entity Too Large")
    conn.close()


def test_feedback_and_review_reject_bad_input(web):
    token = {"feedback_token": "x"}
    assert (
        web.post("/api/v1/feedback", json={"upload_id": 7, "label": 3, **token}).status_code == 400
    )
    missing = {"upload_id": "00000000-0000-4000-8000-000000000000", "label": 3, **token}
    assert web.post("/api/v1/feedback", json=missing).status_code == 404
    assert (
        web.post("/api/v1/feedback", json={"upload_id": "a", "label": 12, **token}).status_code
        == 400
    )
    assert web.post("/api/v1/feedback", data="nope").status_code == 400
    bless = {"upload_id": "a", "action": "bless", "seen_label": 1}
    assert web.post("/api/v1/review", json=bless, auth=web.reviewer).status_code == 400
    unseen = {"upload_id": "a", "action": "confirm"}
    assert web.post("/api/v1/review", json=unseen, auth=web.reviewer).status_code == 400


def test_forms_need_a_csrf_token(web, test_images):
    public_id = web.predict(fresh(test_images[3][0], "csrf"))["upload_id"]
    answer = web.post(f"/feedback/{public_id}", data={"label": "3"})
    assert answer.status_code == 400
    assert "form expired" in answer.text


def test_live_accuracy_counts_feedback_and_reviews_per_version(web, test_images, production_model):
    version = production_model.version

    def count(name: str, verdict: str) -> float:
        key = (("model_version", version), ("verdict", verdict))
        return samples(web, name).get(key, 0.0)

    names = ("mlops_feedback_total", "mlops_reviews_total")
    before = {(name, v): count(name, v) for name in names for v in ("right", "wrong", "rejected")}
    status_before = web.get("/status").text
    backlog_before = int(re.search(r'id="backlog">(\d+)<', status_before).group(1))

    # Three uploads: feedback says right, feedback says wrong, a reviewer corrects one.
    answers = [web.predict(fresh(test_images[i][0], f"live-{i}")) for i in range(3)]
    for answer, label in zip(answers[:2], (None, "wrong"), strict=True):
        given = answer["digit"] if label is None else (answer["digit"] + 1) % 10
        body = {"upload_id": answer["upload_id"], "feedback_token": answer["feedback_token"]}
        web.post("/api/v1/feedback", json={**body, "label": given}).raise_for_status()
    third = answers[2]
    corrected = review(
        web, third["upload_id"], "correct", seen=third["digit"], label=(third["digit"] + 3) % 10
    )
    assert corrected.status_code == 200, corrected.text

    assert count("mlops_feedback_total", "right") == before[("mlops_feedback_total", "right")] + 1
    assert count("mlops_feedback_total", "wrong") == before[("mlops_feedback_total", "wrong")] + 1
    assert count("mlops_reviews_total", "wrong") == before[("mlops_reviews_total", "wrong")] + 1
    predictions = samples(web, "mlops_predictions_total")
    assert sum(v for k, v in predictions.items() if ("model_version", version) in k) >= 3

    # The status page: the accuracy chart has a point for this version today, the
    # version's row names its data version, and the backlog grew by the two pending uploads.
    status = web.get("/status")
    assert status.status_code == 200
    page = status.text
    assert re.search(rf'<g class="point" data-version="{version}">', page)
    assert 'id="uploads-chart"' in page and 'id="confusion-chart"' in page
    row = re.search(rf"<tr><td>{version}</td><td>([^<]+)</td>", page)
    assert row and row.group(1) == production_model.tags["data_version"]
    assert int(re.search(r'id="backlog">(\d+)<', page).group(1)) == backlog_before + 2


def drop_app_connections(web) -> int:
    """What a database restart or failover does to the app: every connection of its
    role is closed by the server. Returns how many were."""
    with psycopg.connect(web.env["MLOPS_DATABASE_URL"], autocommit=True) as conn:
        return conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE usename = current_user AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def test_connections_the_database_dropped_are_replaced(web, test_images):
    """A pooled connection idle for over a second is checked before a request takes it;
    one in steady use is not, and a request on it answers 503 once, then it is replaced."""
    png = test_images[0][0]

    def statuses(count: int) -> list[int]:
        return [
            web.post("/api/v1/predict", files={"file": ("d.png", png)}).status_code
            for _ in range(count)
        ]

    assert set(statuses(10)) == {200}
    assert drop_app_connections(web) > 0
    time.sleep(1.5)
    assert statuses(20) == [200] * 20, "idle connections the database dropped were used"

    assert set(statuses(10)) == {200}
    dropped = drop_app_connections(web)
    after = statuses(40)
    assert set(after) <= {200, 503}, after
    assert after.count(503) <= dropped, (after, dropped)
    assert after[-10:] == [200] * 10, after
