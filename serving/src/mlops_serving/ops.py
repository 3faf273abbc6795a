"""Probes and metrics for the operators."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import uploads

ops = Blueprint("ops", __name__)


def state():
    return current_app.extensions["mlops"]


@ops.get("/healthz")
def healthz():
    """The process is up."""
    return jsonify(status="ok")


@ops.get("/readyz")
def readyz():
    """A model is loaded: the app can answer predictions."""
    model = state().models.current
    if model is None:
        return jsonify(status="no model loaded", last_error=state().models.last_error), 503
    return jsonify(status="ready", model_version=model.version, data_version=model.data_version)


@ops.get("/metrics")
def metrics():
    with state().pool.connection() as conn:
        waiting, oldest = uploads.originals_waiting(conn)
    state().metrics.originals_waiting.set(waiting)
    state().metrics.originals_oldest.set(oldest or 0)
    return Response(generate_latest(state().metrics.exposition), mimetype=CONTENT_TYPE_LATEST)
