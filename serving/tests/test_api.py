"""The JSON API and the probes, over HTTP to waitress, against the real services."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib

import psycopg
import pytest
from mlops_serving import uploads
from PIL import Image
from webapp import bucket, outbox_empty


def stored(web) -> tuple[int, int]:
    """Rows in the uploads table and objects in the uploads bucket, once the outbox is empty."""
    outbox_empty(web.env)
    with psycopg.connect(web.env["MLOPS_DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
    objects = sum(
        page.get("KeyCount", 0)
        for page in bucket(web.env).get_paginator("list_objects_v2").paginate(Bucket="web-uploads")
    )
    return rows, objects


def test_the_test_set_through_the_api_scores_the_models_own_accuracy(
    web, test_images, production_model
):
    correct = 0
    for data, label in test_images:
        answer = web.post("/api/v1/predict", files={"file": ("digit.png", data, "image/png")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
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


def test_predict_accepts_base64_json_and_feedback_is_recorded(web, test_images):
    data, label = test_images[0]
    # A fresh file: one byte more (a PNG ignores what follows its end), so its key is new.
    data += b"\0"
    before = stored(web)
    answer = web.post("/api/v1/predict", json={"image": base64.b64encode(data).decode()})
    assert answer.status_code == 200, answer.text
    upload_id = answer.json()["upload_id"]
    # One row (holding the 28x28 input the model saw) and, once shipped, one object: the
    # original, under its content address.
    assert stored(web) == (before[0] + 1, before[1] + 1)
    key = uploads.object_key(hashlib.sha256(data).hexdigest(), "png")
    assert bucket(web.env).get_object(Bucket="web-uploads", Key=key)["Body"].read() == data
    with psycopg.connect(web.env["MLOPS_DATABASE_URL"]) as conn:
        model_input = conn.execute(
            "SELECT model_input FROM uploads WHERE id = %s", (upload_id,)
        ).fetchone()[0]
    seen = Image.open(io.BytesIO(model_input))
    assert (seen.format, seen.size, seen.mode) == ("PNG", (28, 28), "L")
    assert web.post("/api/v1/feedback", json={"upload_id": upload_id, "label": label}).json() == {
        "upload_id": upload_id,
        "user_label": label,
    }
    with psycopg.connect(web.env["MLOPS_DATABASE_URL"]) as conn:
        user_label, status = conn.execute(
            "SELECT user_label, review_status FROM uploads WHERE id = %s", (upload_id,)
        ).fetchone()
    assert (user_label, status) == (label, "pending")


def test_review_api_needs_a_reviewer_and_confirms(web, test_images):
    data, _ = test_images[1]
    upload_id = web.post("/api/v1/predict", files={"file": ("d.png", data)}).json()["upload_id"]
    assert (
        web.post("/api/v1/review", json={"upload_id": upload_id, "action": "confirm"}).status_code
        == 401
    )
    wrong = web.post(
        "/api/v1/review",
        json={"upload_id": upload_id, "action": "confirm"},
        auth=("reviewer", "nope"),
    )
    assert wrong.status_code == 401
    answer = web.post(
        "/api/v1/review",
        json={"upload_id": upload_id, "action": "correct", "label": 4},
        auth=web.reviewer,
    )
    assert answer.json() == {
        "upload_id": upload_id,
        "review_status": "corrected",
        "reviewed_label": 4,
    }


def test_probes_and_metrics(web, production_model):
    assert web.get("/healthz").json() == {"status": "ok"}
    ready = web.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model_version"] == production_model.version
    metrics = web.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.text
    assert (
        'mlops_http_requests_total{endpoint="/api/v1/predict",method="POST",status="200"}' in text
    )
    assert "mlops_http_request_duration_seconds_bucket" in text
    assert "mlops_predictions_total{digit=" in text
    assert f'version="{production_model.version}"' in text
    assert "mlops_upload_originals_waiting " in text


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
def test_bad_input_gets_a_4xx_json_error_and_stores_nothing(web, case):
    kind, payload, status = BAD_INPUTS[case]
    if payload is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (240, 240, 240)).save(buffer, format="PNG")
        payload = buffer.getvalue()
    before = stored(web)
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
    assert stored(web) == before


def test_feedback_and_review_reject_bad_input(web):
    assert web.post("/api/v1/feedback", json={"upload_id": "7", "label": 3}).status_code == 400
    assert web.post("/api/v1/feedback", json={"upload_id": 1, "label": 12}).status_code == 400
    assert web.post("/api/v1/feedback", json={"upload_id": 10**9, "label": 3}).status_code == 404
    assert web.post("/api/v1/feedback", data="nope").status_code == 400
    answer = web.post("/api/v1/review", json={"upload_id": 1, "action": "bless"}, auth=web.reviewer)
    assert answer.status_code == 400


def test_forms_need_a_csrf_token(web):
    answer = web.post("/feedback/1", data={"label": "3"})
    assert answer.status_code == 400
    assert "form expired" in answer.text
