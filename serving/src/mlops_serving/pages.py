"""The pages people use: upload or draw a digit, see the prediction, give feedback, status."""

from __future__ import annotations

import base64
import binascii
import logging
import time

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from mlops_uploads import web as uploads

from .context import state, upload_or_404
from .preprocess import ImageRejected
from .quality import WINDOW_DAYS as QUALITY_DAYS
from .service import NoModel, predict_and_store, top

pages = Blueprint("pages", __name__)
log = logging.getLogger(__name__)
# The feedback tokens of a visitor's latest uploads, kept in their (signed) session.
KEPT_TOKENS = 20


def decode_data_url(value: str) -> bytes:
    """The canvas sends `data:image/png;base64,...`."""
    _, _, payload = value.partition(",")
    try:
        return base64.b64decode(payload or value, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("the drawing could not be decoded") from None


def parse_digit(value) -> int:
    try:
        digit = int(value)
    except (TypeError, ValueError):
        abort(400, "label must be a digit from 0 to 9")
    if not 0 <= digit <= 9:
        abort(400, "label must be a digit from 0 to 9")
    return digit


def feedback_token(upload_id: str) -> str | None:
    """The token this visitor got with the upload's prediction, if they made it."""
    return dict(session.get("feedback", [])).get(upload_id)


@pages.get("/")
def index():
    return render_template("index.html", model=state().models.current)


@pages.post("/predict")
def predict_form():
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        data = upload.read()
    elif request.form.get("drawing"):
        data = decode_data_url(request.form["drawing"])
    else:
        raise ImageRejected("choose an image file, drop one, or draw a digit")
    if len(data) > state().config.max_upload_bytes:
        raise ImageRejected(
            f"the image is larger than {state().config.max_upload_bytes} bytes", 413
        )
    try:
        prediction = predict_and_store(data)
    except NoModel:
        return render_template("index.html", model=None), 503
    kept = [pair for pair in session.get("feedback", []) if pair[0] != prediction.upload_id]
    session["feedback"] = [*kept, [prediction.upload_id, prediction.feedback_token]][-KEPT_TOKENS:]
    return redirect(url_for("pages.result", upload_id=prediction.upload_id))


@pages.get("/result/<upload_id>")
def result(upload_id: str):
    row = upload_or_404(upload_id)
    return render_template(
        "result.html",
        upload=row,
        top=top(row.probabilities),
        can_give_feedback=feedback_token(upload_id) is not None and row.review_status == "pending",
    )


@pages.get("/uploads/<upload_id>/28x28.png")
def preprocessed_image(upload_id: str):
    return Response(
        upload_or_404(upload_id).model_input,
        mimetype="image/png",
        headers={"Cache-Control": "private, max-age=86400"},
    )


@pages.post("/feedback/<upload_id>")
def feedback(upload_id: str):
    token = feedback_token(upload_id)
    if token is None:
        abort(403, "feedback is for the person who uploaded the image, from the same browser")
    row = upload_or_404(upload_id)
    choice = request.form.get("label", "")
    label = row.predicted_label if choice == "correct" else parse_digit(choice)
    with state().pool.connection() as conn:
        outcome = uploads.set_feedback(conn, upload_id, token, label)
    if outcome is uploads.Outcome.DECIDED:
        flash("A reviewer has already decided on this upload; thank you all the same.")
    elif outcome is not uploads.Outcome.DONE:
        abort(403, outcome.value)
    else:
        state().metrics.count_feedback(row, label)
        flash(f"Thank you: recorded {label}.")
    return redirect(url_for("pages.result", upload_id=upload_id))


@pages.get("/status")
def status():
    app = state()
    holder = app.models
    try:
        quality = app.quality.get(app.pool, holder, app.shadow)
    except Exception:  # the database is down: the model's part of the page still shows
        log.exception("the status page's figures could not be computed")
        quality = None
    return render_template(
        "status.html",
        holder=holder,
        model=holder.current,
        quality=quality,
        quality_days=QUALITY_DAYS,
        now=time.time(),
        # Error text (addresses, exceptions) only for signed-in reviewers.
        details=bool(session.get("reviewer")),
    )
