"""Configuration from the environment (the serving role's EnvironmentFile sets it).

Each setting is named once here, with its default; the serving role writes
the variables and `mlops-serving` (server.py) reads the server's own from the
same Config. MLflow and S3 clients also read their standard variables:
MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD (the read-only `web` account),
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION (the `web`
identity).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


class ConfigError(RuntimeError):
    """A required setting is missing or malformed."""


@dataclass(frozen=True)
class Config:
    secret_key: str
    database_url: str
    s3_endpoint: str
    uploads_bucket: str = "web-uploads"
    model_name: str = "mnist"
    model_alias: str = "production"
    # shadow mode: the version holding this alias predicts beside production on every
    # request (its digit is stored, production's is answered); empty: no shadow
    shadow_alias: str = "candidate"
    # the share of predictions the candidate shadows (its ONNX run doubles the model's CPU)
    shadow_share: float = 1.0
    # user:secret pairs, comma separated; the secret is a werkzeug password
    # hash (generate_password_hash) or the password itself
    reviewers: str = ""
    max_upload_bytes: int = 5 * 1024 * 1024
    max_pixels: int = 25_000_000
    model_poll_seconds: int = 10
    # where the last production model is kept, to serve at once after a restart
    model_dir: str = ""
    db_pool_size: int = 8
    # the longest an upload's original waits in the outbox while uploads keep coming
    store_max_delay_seconds: int = 30
    # past this many bytes waiting in the outbox, predictions answer 503
    outbox_max_bytes: int = 1024 * 1024 * 1024
    # images above this many pixels decode one at a time per host (see server.py)
    costly_decode_pixels: int = 2_000_000
    # how long a request waits for the costly-decode slot before 503 Retry-After
    decode_wait_seconds: float = 2.0
    # failed logins allowed per client address and per account within login_window_seconds
    login_failures_per_client: int = 10
    login_failures_per_account: int = 20
    login_window_seconds: int = 900
    # how often a process recomputes the status page's figures (a month of uploads)
    status_refresh_seconds: int = 60
    # cookies only over HTTPS, on every request (behind the edge they are anyway)
    secure_cookies: bool = False
    # the edge's address: its X-Forwarded-For/-Proto/-Host/-Port name the client
    # and the URL it used (empty: no proxy is trusted, those headers are dropped)
    trusted_proxy: str = ""
    # waitress: processes, threads, connections per process, idle timeout
    web_host: str = "0.0.0.0"  # noqa: S104 (a server)
    web_port: int = 8000
    web_processes: int = 1
    web_threads: int = 4
    web_connection_limit: int = 200
    web_channel_timeout: int = 30
    # on SIGTERM: how long the requests in flight may take to finish before the process exits
    web_drain_seconds: float = 10.0
    # on SIGTERM: how long idle keep-alive connections stay open for their client (the
    # edge) to close them or use them once more; longer than the edge's upstream
    # keepalive_timeout (edge_upstream_keepalive_timeout, 4 s), so that the edge closes them
    web_keepalive_grace_seconds: float = 5.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        """Every field from MLOPS_<FIELD> (upper case); the first three are required."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = f"MLOPS_{field.name.upper()}"
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            try:
                values[field.name] = _parse(raw, field.type)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a valid {field.type}") from None
        missing = [
            f"MLOPS_{name.upper()}"
            for name in ("secret_key", "database_url", "s3_endpoint")
            if name not in values
        ]
        if missing:
            raise ConfigError(
                f"not set: {', '.join(missing)} (the serving role's environment file)"
            )
        if not 0.0 <= values.get("shadow_share", 1.0) <= 1.0:  # NaN too
            raise ConfigError(
                f"MLOPS_SHADOW_SHARE must be from 0 to 1, not {values['shadow_share']}"
            )
        return cls(**values)

    def reviewers_by_name(self) -> dict[str, str]:
        pairs = (entry.split(":", 1) for entry in self.reviewers.split(",") if ":" in entry)
        return {user.strip(): digest.strip() for user, digest in pairs}

    @property
    def max_request_body_bytes(self) -> int:
        """The largest body worth reading: an upload, as base64 in JSON, plus a form's parts."""
        return self.max_upload_bytes * 4 // 3 + 64 * 1024


def _parse(raw: str, kind: str):
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return raw
