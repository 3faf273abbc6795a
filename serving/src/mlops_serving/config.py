"""Configuration from the environment (the serving role's EnvironmentFile sets it).

MLflow and S3 clients also read their standard variables: MLFLOW_TRACKING_URI /
_USERNAME / _PASSWORD (the read-only `web` account), AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION (the `web` identity).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


@dataclass(frozen=True)
class Config:
    secret_key: str
    database_url: str
    s3_endpoint: str
    uploads_bucket: str
    model_name: str = "mnist"
    model_alias: str = "production"
    # user:secret pairs, comma separated; the secret is a werkzeug password
    # hash (generate_password_hash) or the password itself
    reviewers: str = ""
    max_upload_bytes: int = 5 * 1024 * 1024
    max_pixels: int = 25_000_000
    model_poll_seconds: int = 10
    model_dir: str = ""
    db_pool_size: int = 8
    # the longest an upload's original waits in the outbox while uploads keep coming
    store_max_delay_seconds: int = 30

    @classmethod
    def from_env(cls) -> Config:
        missing = [
            name
            for name in ("MLOPS_SECRET_KEY", "MLOPS_DATABASE_URL", "MLOPS_S3_ENDPOINT")
            if not os.environ.get(name)
        ]
        if missing:
            raise RuntimeError(
                f"not set: {', '.join(missing)} (the serving role's environment file)"
            )
        return cls(
            secret_key=os.environ["MLOPS_SECRET_KEY"],
            database_url=os.environ["MLOPS_DATABASE_URL"],
            s3_endpoint=os.environ["MLOPS_S3_ENDPOINT"],
            uploads_bucket=os.environ.get("MLOPS_UPLOADS_BUCKET", "web-uploads"),
            model_name=os.environ.get("MLOPS_MODEL_NAME", "mnist"),
            model_alias=os.environ.get("MLOPS_MODEL_ALIAS", "production"),
            reviewers=os.environ.get("MLOPS_REVIEWERS", ""),
            max_upload_bytes=_int("MLOPS_MAX_UPLOAD_BYTES", 5 * 1024 * 1024),
            max_pixels=_int("MLOPS_MAX_PIXELS", 25_000_000),
            model_poll_seconds=_int("MLOPS_MODEL_POLL_SECONDS", 10),
            model_dir=os.environ.get("MLOPS_MODEL_DIR", ""),
            db_pool_size=_int("MLOPS_DB_POOL_SIZE", 8),
            store_max_delay_seconds=_int("MLOPS_STORE_MAX_DELAY_SECONDS", 30),
        )

    def reviewers_by_name(self) -> dict[str, str]:
        pairs = (entry.split(":", 1) for entry in self.reviewers.split(",") if ":" in entry)
        return {user.strip(): digest.strip() for user, digest in pairs}
