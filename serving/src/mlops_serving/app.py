"""The Flask application factory.

    create_app()           configuration from the environment (production: waitress, server.py)
    create_app(config)     an explicit Config (tests)

Blueprints: pages (upload, result, feedback, status), review (login
required), api (JSON under /api/v1), ops (/healthz, /readyz, /metrics).
Starting needs neither MLflow nor PostgreSQL: the kept model serves at once,
and requests that need the database fail with 503 until it answers.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, g, jsonify, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from psycopg import OperationalError
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.exceptions import HTTPException

from .config import Config
from .metrics import Metrics
from .model import ModelHolder
from .outbox import UploadShipper
from .preprocess import ImageRejected
from .quality import QualityCache
from .service import Busy, DecodeGate, NoModel

log = logging.getLogger(__name__)
# Web requests never wait long on a lock or a slow statement (the retrain flow and
# the shipper share the uploads table).
DB_OPTIONS = "-c lock_timeout=2s -c statement_timeout=10s"


@dataclass
class State:
    config: Config
    models: ModelHolder
    shadow: ModelHolder | None  # the candidate in shadow mode (config.shadow_alias)
    shipper: UploadShipper
    pool: ConnectionPool
    metrics: Metrics
    decode_gate: DecodeGate
    quality: QualityCache


class CheckWhenIdle:
    """The pool's check: a round trip to PostgreSQL only for a connection not taken for
    longer than `idle_seconds`, so one the database dropped (a restart, a failover) is
    replaced before a request takes it. A connection in steady use is not asked again
    on every request (a round trip each, about a tenth of a prediction's cost); one
    that breaks anyway answers 503 once and is discarded.

    It counts from when the connection was last taken, not returned: a return hook
    (the pool's `reset`) sends every return through a pool worker thread, one more
    thread hand-off per request. A connection held long is checked once more."""

    def __init__(self, idle_seconds: float = 1.0):
        self.idle_seconds = idle_seconds
        self._taken_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, conn) -> None:
        now = time.monotonic()
        with self._lock:
            taken_at = self._taken_at.get(conn)
            self._taken_at[conn] = now
        if taken_at is None or now - taken_at > self.idle_seconds:
            ConnectionPool.check_connection(conn)


class SessionInterface(SecureCookieSessionInterface):
    """The session cookie is Secure on every request that came over HTTPS (through
    the edge, whose X-Forwarded-Proto waitress trusts), and everywhere when
    secure_cookies says so. Requests between hosts in plain HTTP still log in."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or request.is_secure

    def open_session(self, app: Flask, incoming):
        # Without a cookie (API clients, a first visit) the session starts empty: Flask
        # would build its signing serializer first, on every request.
        if app.secret_key and not incoming.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, incoming)


def create_app(
    config: Config | None = None, start_background: bool = True, decode_slots=None
) -> Flask:
    """start_background: serve the kept model, watch MLflow, ship originals (tests may drive
    them); decode_slots: the costly-decode semaphore the web processes share (server.py)."""
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.secret_key,
        MAX_CONTENT_LENGTH=config.max_request_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.secure_cookies,
        PREFERRED_URL_SCHEME="https" if config.secure_cookies else "http",
        WTF_CSRF_TIME_LIMIT=3600,
    )
    app.session_interface = SessionInterface()
    csrf = CSRFProtect(app)
    check = CheckWhenIdle()
    pool = ConnectionPool(
        config.database_url,
        min_size=1,
        max_size=config.db_pool_size + 1,  # + 1: the uploads' shipper
        kwargs={"autocommit": True, "options": DB_OPTIONS},
        check=check,
        timeout=5,
        open=True,
    )
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
    shadow = (
        ModelHolder(
            config.model_name,
            config.shadow_alias,
            config.model_poll_seconds,
            str(Path(config.model_dir) / "shadow") if config.model_dir else "",
            optional=True,
        )
        if config.shadow_alias
        else None
    )
    shipper = UploadShipper(
        config.s3_endpoint,
        config.uploads_bucket,
        pool,
        max_delay_seconds=config.store_max_delay_seconds,
        max_bytes=config.outbox_max_bytes,
        failures=metrics.store_failures,
    )
    gate = DecodeGate(config.costly_decode_pixels, config.decode_wait_seconds, decode_slots)
    state = State(
        config,
        models,
        shadow,
        shipper,
        pool,
        metrics,
        gate,
        QualityCache(config.status_refresh_seconds),
    )
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
        models.start()
        if shadow is not None:
            shadow.start()
        shipper.start()
    return app


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def register_error_handlers(app: Flask) -> None:
    def answer(status: int, message: str, retry_after: int | None = None):
        if wants_json():
            response = jsonify(error=message, status=status)
        else:
            response = app.make_response(
                render_template("error.html", status=status, message=message)
            )
        response.status_code = status
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(ImageRejected)
    def rejected(error: ImageRejected):
        return answer(error.status, str(error), error.retry_after)

    @app.errorhandler(Busy)
    def busy(error: Busy):
        return answer(503, str(error), error.retry_after)

    @app.errorhandler(NoModel)
    def no_model(error: NoModel):
        return answer(503, f"{error}; the page says so until a model version holds the alias", 30)

    @app.errorhandler(PoolTimeout)
    @app.errorhandler(OperationalError)
    def database_down(error: Exception):
        log.warning("the database is unreachable: %s", error)
        return answer(503, "the database is unreachable; try again shortly", 10)

    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError):
        return answer(400, f"the form expired or was not sent by this site ({error.description})")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        messages = {413: f"the request is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"}
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
        # Labels from closed sets only: the route's template, a known method.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in Metrics.METHODS else "other"
        state.metrics.requests.labels(endpoint, method, str(response.status_code)).inc()
        if hasattr(g, "started"):
            state.metrics.latency.labels(endpoint).observe(time.perf_counter() - g.started)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response
