"""The JSON API: predict, feedback, and review for programs."""

from __future__ import annotations

import base64
import binascii

from flask import Blueprint, abort, jsonify, request
from mlops_uploads import web as uploads

from . import logins
from .context import state, upload_or_404
from .preprocess import ImageRejected
from .service import predict_and_store

api = Blueprint("api", __name__, url_prefix="/api/v1")

# How each refused label change answers.
OUTCOME_STATUS = {
    uploads.Outcome.NOT_FOUND: 404,
    uploads.Outcome.FORBIDDEN: 403,
    uploads.Outcome.DECIDED: 409,
    uploads.Outcome.CHANGED: 409,
}


def json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, "send a JSON object")
    return body


def digit_field(body: dict, field: str, required: bool = False) -> int | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 9:
        abort(400, f"`{field}` must be a digit from 0 to 9")
    return value


def text_field(body: dict, field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not 0 < len(value) <= 100:
        abort(400, f"`{field}` must be the string the prediction answered with")
    return value


def refuse_unless_done(outcome: uploads.Outcome) -> None:
    if outcome is not uploads.Outcome.DONE:
        abort(OUTCOME_STATUS[outcome], outcome.value)


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
    if len(data) > state().config.max_upload_bytes:
        raise ImageRejected(
            f"the image is larger than {state().config.max_upload_bytes} bytes", 413
        )
    return jsonify(predict_and_store(data).as_json())


@api.post("/feedback")
def feedback():
    """{"upload_id": "...", "feedback_token": "...", "label": 7} or ... "correct": true.

    Only the uploader (who got the token with the prediction), and only until a
    reviewer has decided.
    """
    body = json_body()
    public_id = text_field(body, "upload_id")
    token = text_field(body, "feedback_token")
    label = digit_field(body, "label")
    if label is None and body.get("correct") is not True:
        abort(400, 'send "label": <0-9> or "correct": true')
    row = upload_or_404(public_id)
    if label is None:
        label = row.predicted_label
    with state().pool.connection() as conn:
        refuse_unless_done(uploads.set_feedback(conn, public_id, token, label))
    state().metrics.count_feedback(row, label)
    return jsonify(upload_id=public_id, user_label=label)


@api.post("/review")
def review():
    """As a reviewer (basic auth): {"upload_id": "...", "action": "confirm", "seen_label": 3}.

    seen_label: the label shown when the reviewer looked (the user's, else the
    model's); the review is refused with 409 when it is not the label now.
    `correct` also needs "label".
    """
    auth = request.authorization
    try:
        signed_in = auth is not None and logins.check(auth.username or "", auth.password or "")
    except logins.TooManyFailures as error:
        return jsonify(error=str(error), status=429), 429, {"Retry-After": str(error.retry_after)}
    if not signed_in:
        return (
            jsonify(error="reviewer credentials required", status=401),
            401,
            {"WWW-Authenticate": 'Basic realm="review"'},
        )
    body = json_body()
    public_id = text_field(body, "upload_id")
    action = body.get("action")
    if action not in uploads.REVIEW_SQL:
        abort(400, "`action` must be confirm, correct or reject")
    seen = digit_field(body, "seen_label", required=True)
    label = digit_field(body, "label", required=action == "correct")
    with state().pool.connection() as conn:
        refuse_unless_done(uploads.review(conn, public_id, action, auth.username, seen, label))
    row = upload_or_404(public_id)
    state().metrics.count_review(row)
    return jsonify(
        upload_id=public_id,
        review_status=row.review_status,
        reviewed_label=row.reviewed_label,
        reviewer=row.reviewer,
    )


@api.get("/uploads/counts")
def counts():
    with state().pool.connection() as conn:
        return jsonify(uploads.counts(conn))
