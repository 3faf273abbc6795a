"""Probes and metrics for the operators.

Anonymous probes say what state the app is in, never why in detail: no
addresses, no error text (those go to the logs and the reviewers' status page).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from mlops_uploads import schema
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import outbox
from .context import state

ops = Blueprint("ops", __name__)


@ops.get("/healthz")
def healthz():
    """The process is up."""
    return jsonify(status="ok")


@ops.get("/readyz")
def readyz():
    """Ready when a model is loaded and the database, at the schema this app needs, answers."""
    models = state().models
    model = models.current
    shadow = state().shadow.current if state().shadow is not None else None
    body = {
        "model_version": model.version if model else None,
        "data_version": model.data_version if model else None,
        # shadow mode: the candidate predicting beside the model (None: no candidate)
        "shadow_version": shadow.version if shadow else None,
        "mlflow": {True: "reachable", False: "unreachable", None: "not asked yet"}[
            models.mlflow_reachable
        ],
    }
    try:
        with state().pool.connection() as conn:
            version = schema.applied_version(conn)
        body["database"] = "ok" if version >= schema.LATEST else "schema behind"
    except Exception:  # unreachable, or the pool timed out: the body says so, the log has why
        body["database"] = "unreachable"
    if model is None:
        body["status"] = "no model loaded"
    elif body["database"] != "ok":
        body["status"] = f"database {body['database']}"
    else:
        body["status"] = "ready"
    return jsonify(body), 200 if body["status"] == "ready" else 503


@ops.get("/metrics")
def metrics():
    app = state()
    with app.pool.connection() as conn:
        count, size, oldest = outbox.waiting(conn)
    app.metrics.originals_waiting.set(count)
    app.metrics.originals_bytes.set(size)
    app.metrics.originals_oldest.set(oldest or 0)
    return Response(generate_latest(app.metrics.exposition), mimetype=CONTENT_TYPE_LATEST)
