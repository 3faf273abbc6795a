"""The Flask application factory.

    create_app()           configuration from the environment (production: waitress, server.py)
    create_app(config)     an explicit Config (tests)

Blueprints: pages (upload, result, feedback, status), review (login
required), api (JSON under /api/v1), ops (/healthz, /readyz, /metrics).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import Flask, g, jsonify, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from psycopg_pool import ConnectionPool
from werkzeug.exceptions import HTTPException

from . import uploads
from .config import Config
from .metrics import Metrics
from .model import ModelHolder
from .storage import UploadShipper

log = logging.getLogger(__name__)


@dataclass
class State:
    config: Config
    models: ModelHolder
    shipper: UploadShipper
    pool: ConnectionPool
    metrics: Metrics


def create_app(config: Config | None = None, start_background: bool = True) -> Flask:
    """start_background: the model watch and the uploads' shipper (tests may drive them)."""
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.secret_key,
        MAX_CONTENT_LENGTH=config.max_upload_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,
    )
    csrf = CSRFProtect(app)
    pool = ConnectionPool(
        config.database_url,
        min_size=1,
        max_size=config.db_pool_size + 1,  # + 1: the uploads' shipper
        kwargs={"autocommit": True},
        open=True,
    )
    with pool.connection() as conn:
        applied = uploads.migrate(conn)
        if applied:
            log.info("applied schema migrations %s", applied)
    metrics = Metrics()
    models = ModelHolder(
        config.model_name,
        config.model_alias,
        config.model_poll_seconds,
        config.model_dir,
        on_live=lambda loaded: metrics.set_model(
            config.model_name, loaded.version, loaded.data_version
        ),
    )
    shipper = UploadShipper(
        config.s3_endpoint,
        config.uploads_bucket,
        pool,
        max_delay_seconds=config.store_max_delay_seconds,
        failures=metrics.store_failures,
    )
    state = State(config, models, shipper, pool, metrics)
    app.extensions["mlops"] = state

    from .api import api
    from .ops import ops
    from .pages import pages
    from .review import review

    csrf.exempt(api)  # the JSON API holds no session: nothing to forge
    csrf.exempt(ops)
    for blueprint in (pages, review, api, ops):
        app.register_blueprint(blueprint)

    register_error_handlers(app)
    register_metrics_hooks(app, state)
    if start_background:
        models.refresh()
        models.start()
        shipper.start()
    return app


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def register_error_handlers(app: Flask) -> None:
    from flask import render_template

    from .preprocess import ImageRejected
    from .service import NoModel

    def answer(status: int, message: str):
        if wants_json():
            return jsonify(error=message, status=status), status
        return render_template("error.html", status=status, message=message), status

    @app.errorhandler(ImageRejected)
    def rejected(error: ImageRejected):
        return answer(error.status, str(error))

    @app.errorhandler(NoModel)
    def no_model(error: NoModel):
        return answer(503, f"{error}; the page says so until a model version holds the alias")

    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError):
        return answer(400, f"the form expired or was not sent by this site ({error.description})")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        messages = {413: f"the upload is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"}
        return answer(error.code or 500, messages.get(error.code, error.description))

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return answer(500, "internal error; it was logged")


def register_metrics_hooks(app: Flask, state: State) -> None:
    @app.before_request
    def start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def count(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        state.metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        if hasattr(g, "started"):
            state.metrics.latency.labels(endpoint).observe(time.perf_counter() - g.started)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response
