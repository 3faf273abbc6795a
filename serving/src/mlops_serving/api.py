"""The JSON API: predict, feedback, and review for programs."""

from __future__ import annotations

import base64
import binascii

from flask import Blueprint, abort, current_app, jsonify, request

from . import uploads
from .preprocess import ImageRejected
from .review import valid_login
from .service import predict_and_store

api = Blueprint("api", __name__, url_prefix="/api/v1")


def state():
    return current_app.extensions["mlops"]


def json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, "send a JSON object")
    return body


@api.post("/predict")
def predict():
    """multipart/form-data with `file`, or JSON {"image": "<base64 PNG/JPEG/...>"}."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise ImageRejected("the form has no field `file`")
        data = upload.read()
    else:
        encoded = json_body().get("image")
        if not isinstance(encoded, str):
            raise ImageRejected('send {"image": "<base64 image>"} or a multipart field `file`')
        try:
            data = base64.b64decode(encoded.partition(",")[2] or encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ImageRejected("`image` is not valid base64") from None
    return jsonify(predict_and_store(data).as_json())


def upload_id_and_digit(body: dict, field: str) -> tuple[int, int | None]:
    upload_id = body.get("upload_id")
    if not isinstance(upload_id, int) or isinstance(upload_id, bool):
        abort(400, "`upload_id` must be an integer")
    value = body.get(field)
    if value is None:
        return upload_id, None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 9:
        abort(400, f"`{field}` must be a digit from 0 to 9")
    return upload_id, value


@api.post("/feedback")
def feedback():
    """{"upload_id": 12, "label": 7} or {"upload_id": 12, "correct": true}."""
    body = json_body()
    upload_id, label = upload_id_and_digit(body, "label")
    with state().pool.connection() as conn:
        row = uploads.get(conn, upload_id)
        if row is None:
            abort(404, "no such upload")
        if label is None:
            if body.get("correct") is not True:
                abort(400, 'send "label": <0-9> or "correct": true')
            label = row.predicted_label
        uploads.set_feedback(conn, upload_id, label)
    return jsonify(upload_id=upload_id, user_label=label)


@api.post("/review")
def review():
    """As a reviewer (basic auth): {"upload_id": 12, "action": "confirm", "label": 3}."""
    auth = request.authorization
    if auth is None or not valid_login(auth.username or "", auth.password or ""):
        return (
            jsonify(error="reviewer credentials required", status=401),
            401,
            {"WWW-Authenticate": 'Basic realm="review"'},
        )
    body = json_body()
    upload_id, label = upload_id_and_digit(body, "label")
    action = body.get("action")
    if action not in ("confirm", "correct", "reject"):
        abort(400, "`action` must be confirm, correct or reject")
    if action == "correct" and label is None:
        abort(400, "correct needs `label`")
    with state().pool.connection() as conn:
        if not uploads.review(conn, upload_id, action, auth.username, label):
            abort(409, "no such upload, or it is already part of a dataset version")
        row = uploads.get(conn, upload_id)
    return jsonify(
        upload_id=upload_id, review_status=row.review_status, reviewed_label=row.reviewed_label
    )


@api.get("/uploads/counts")
def counts():
    with state().pool.connection() as conn:
        return jsonify(uploads.counts(conn))
