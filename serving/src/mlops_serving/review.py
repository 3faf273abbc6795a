"""The review page for data scientists: confirm, correct or reject what users uploaded."""

from __future__ import annotations

import hmac
from functools import wraps

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
from werkzeug.security import check_password_hash

from . import uploads
from .pages import parse_digit

review = Blueprint("review", __name__)
PAGE_SIZE = 50


def state():
    return current_app.extensions["mlops"]


def valid_login(username: str, password: str) -> bool:
    """Reviewers come from MLOPS_REVIEWERS: user:werkzeug-hash, or user:password (0600 env file)."""
    stored = state().config.reviewers_by_name().get(username)
    if not stored:
        return False
    if stored.startswith(("scrypt:", "pbkdf2:")):
        return check_password_hash(stored, password)
    return hmac.compare_digest(stored.encode(), password.encode())


def reviewer_required(view):
    @wraps(view)
    def guarded(*args, **kwargs):
        if not session.get("reviewer"):
            return redirect(url_for("review.login", next=request.path))
        return view(*args, **kwargs)

    return guarded


@review.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        username = request.form.get("username", "")
        if valid_login(username, request.form.get("password", "")):
            session.clear()
            session["reviewer"] = username
            target = request.args.get("next", "")
            return redirect(
                target
                if target.startswith("/") and not target.startswith("//")
                else url_for("review.queue")
            )
        error = "Wrong user name or password."
    return render_template("login.html", error=error), (401 if error else 200)


@review.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("pages.index"))


@review.get("/review")
@reviewer_required
def queue():
    status = request.args.get("status", "pending")
    if status not in (*uploads.REVIEW_STATES, "all"):
        abort(400, f"status must be one of {', '.join(uploads.REVIEW_STATES)} or all")
    page = max(1, request.args.get("page", 1, type=int))
    with state().pool.connection() as conn:
        rows = uploads.listing(
            conn, None if status == "all" else status, PAGE_SIZE, (page - 1) * PAGE_SIZE
        )
        counts = uploads.counts(conn)
    return render_template(
        "review.html", rows=rows, counts=counts, status=status, page=page, page_size=PAGE_SIZE
    )


@review.post("/review/<int:upload_id>")
@reviewer_required
def decide(upload_id: int):
    action = request.form.get("action", "")
    if action not in ("confirm", "correct", "reject"):
        abort(400, "action must be confirm, correct or reject")
    label = parse_digit(request.form.get("label")) if action == "correct" else None
    with state().pool.connection() as conn:
        if not uploads.review(conn, upload_id, action, session["reviewer"], label):
            abort(409, "no such upload, or it is already part of a dataset version")
    return redirect(url_for("review.queue", status=request.form.get("return_status", "pending")))
