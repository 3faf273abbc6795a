"""The pages people use: upload or draw a digit, see the prediction, give feedback, status."""

from __future__ import annotations

import base64
import binascii
import time

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)

from . import uploads
from .preprocess import ImageRejected
from .service import NoModel, predict_and_store

pages = Blueprint("pages", __name__)


def state():
    return current_app.extensions["mlops"]


def decode_data_url(value: str) -> bytes:
    """The canvas sends `data:image/png;base64,...`."""
    _, _, payload = value.partition(",")
    try:
        return base64.b64decode(payload or value, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("the drawing could not be decoded") from None


@pages.get("/")
def index():
    model = state().models.current
    return render_template("index.html", model=model)


@pages.post("/predict")
def predict_form():
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        data = upload.read()
    elif request.form.get("drawing"):
        data = decode_data_url(request.form["drawing"])
    else:
        raise ImageRejected("choose an image file, drop one, or draw a digit")
    try:
        prediction = predict_and_store(data)
    except NoModel:
        return render_template("index.html", model=None), 503
    return redirect(url_for("pages.result", upload_id=prediction.upload_id))


@pages.get("/result/<int:upload_id>")
def result(upload_id: int):
    with state().pool.connection() as conn:
        row = uploads.get(conn, upload_id)
    if row is None:
        abort(404, "no such upload")
    ranked = sorted(enumerate(row.probabilities), key=lambda pair: pair[1], reverse=True)[:3]
    return render_template("result.html", upload=row, top=ranked)


@pages.get("/uploads/<int:upload_id>/28x28.png")
def preprocessed_image(upload_id: int):
    with state().pool.connection() as conn:
        row = uploads.get(conn, upload_id)
    if row is None:
        abort(404, "no such upload")
    return Response(
        row.model_input,
        mimetype="image/png",
        headers={"Cache-Control": "private, max-age=86400"},
    )


@pages.post("/feedback/<int:upload_id>")
def feedback(upload_id: int):
    with state().pool.connection() as conn:
        row = uploads.get(conn, upload_id)
        if row is None:
            abort(404, "no such upload")
        choice = request.form.get("label", "")
        label = row.predicted_label if choice == "correct" else parse_digit(choice)
        uploads.set_feedback(conn, upload_id, label)
    flash(f"Thank you: recorded {label}.")
    return redirect(url_for("pages.result", upload_id=upload_id))


def parse_digit(value) -> int:
    try:
        digit = int(value)
    except (TypeError, ValueError):
        abort(400, "label must be a digit from 0 to 9")
    if not 0 <= digit <= 9:
        abort(400, "label must be a digit from 0 to 9")
    return digit


@pages.get("/status")
def status():
    current = state().models
    return render_template("status.html", holder=current, model=current.current, now=time.time())
