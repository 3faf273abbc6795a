"""The review page for reviewers: confirm, correct or reject what users uploaded."""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from mlops_uploads import REVIEW_STATES
from mlops_uploads import web as uploads
from werkzeug.exceptions import HTTPException

from . import logins
from .api import OUTCOME_STATUS
from .context import state, upload_or_404
from .pages import parse_digit

review = Blueprint("review", __name__)
PAGE_SIZE = 50


def safe_target(target: str) -> str | None:
    """A page of this site to return to after the login, else None (no open redirects).

    Browsers drop tabs and newlines from a Location and read backslashes as
    slashes, so `/\t/evil.example` would leave the site: any of those, a scheme,
    a host, or a path that is not one of our pages is refused.
    """
    if not target or any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or target.startswith("//"):
        return None
    try:
        current_app.url_map.bind("localhost").match(parts.path, method="GET")
    except HTTPException:
        return None
    return target


def reviewer_required(view):
    @wraps(view)
    def guarded(*args, **kwargs):
        if not session.get("reviewer"):
            return redirect(url_for("review.login", next=request.path))
        return view(*args, **kwargs)

    return guarded


@review.route("/login", methods=["GET", "POST"])
def login():
    error, status = None, 200
    if request.method == "POST":
        username = request.form.get("username", "")
        try:
            signed_in = logins.check(username, request.form.get("password", ""))
        except logins.TooManyFailures as refused:
            return (
                render_template("login.html", error=str(refused)),
                429,
                {"Retry-After": str(refused.retry_after)},
            )
        if signed_in:
            session.clear()
            session["reviewer"] = username
            return redirect(safe_target(request.args.get("next", "")) or url_for("review.queue"))
        error, status = "Wrong user name or password.", 401
    return render_template("login.html", error=error), status


@review.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("pages.index"))


@review.get("/review")
@reviewer_required
def queue():
    status = request.args.get("status", "pending")
    if status not in (*REVIEW_STATES, "all"):
        abort(400, f"status must be one of {', '.join(REVIEW_STATES)} or all")
    page = max(1, request.args.get("page", 1, type=int))
    with state().pool.connection() as conn:
        rows = uploads.listing(
            conn, None if status == "all" else status, PAGE_SIZE, (page - 1) * PAGE_SIZE
        )
        counts = uploads.counts(conn)
    return render_template(
        "review.html", rows=rows, counts=counts, status=status, page=page, page_size=PAGE_SIZE
    )


@review.post("/review/<upload_id>")
@reviewer_required
def decide(upload_id: str):
    action = request.form.get("action", "")
    if action not in uploads.REVIEW_SQL:
        abort(400, "action must be confirm, correct or reject")
    seen = parse_digit(request.form.get("seen_label"))
    label = parse_digit(request.form.get("label")) if action == "correct" else None
    with state().pool.connection() as conn:
        outcome = uploads.review(conn, upload_id, action, session["reviewer"], seen, label)
    if outcome is not uploads.Outcome.DONE:
        abort(OUTCOME_STATUS[outcome], outcome.value)
    state().metrics.count_review(upload_or_404(upload_id))
    return redirect(url_for("review.queue", status=request.form.get("return_status", "pending")))
