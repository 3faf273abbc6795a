"""Settings from the environment (the worker's EnvironmentFile sets them).

MLflow and S3 clients read their own standard variables as well:
MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hyperparameters:
    """A training run's parameters (here, not in train.py: the command line reads the
    defaults without importing torch, which costs 10 to 30 s on a small host)."""

    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    validation_share: float = 0.1
    seed: int = 42
    device: str = "auto"

    def as_params(self) -> dict:
        return asdict(self)


# The watch (live.py): the labelled predictions a new production version is judged
# on, and the live accuracy it may lose against the version it replaced.
WATCH_ITEMS = 50
WATCH_MARGIN = 0.05


class ConfigError(RuntimeError):
    """A required setting is missing or out of range."""


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set; the worker's environment file should set it")
    return value


@dataclass(frozen=True)
class Settings:
    data_repo_url: str
    s3_endpoint: str
    dvc_bucket: str
    database_url: str
    experiment: str
    registered_model: str
    work_dir: Path
    # how many data versions a worker keeps fetched (the newest)
    data_cache_versions: int = 3
    # the share of confirmed uploads held out as the users' test set
    users_test_share: float = 0.2
    # where a rollback raises its alert (empty: the log and a Prefect artifact only)
    alertmanager_url: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            data_repo_url=_required("MLOPS_DATA_REPO_URL"),
            s3_endpoint=_required("MLOPS_S3_ENDPOINT"),
            dvc_bucket=os.environ.get("MLOPS_DVC_BUCKET", "dvc-store"),
            database_url=os.environ.get("MLOPS_DATABASE_URL", ""),
            experiment=os.environ.get("MLOPS_MLFLOW_EXPERIMENT", "mnist"),
            registered_model=os.environ.get("MLOPS_REGISTERED_MODEL", "mnist"),
            work_dir=Path(os.environ.get("MLOPS_WORK_DIR", Path.home() / ".cache" / "mlops-flows")),
            data_cache_versions=int(os.environ.get("MLOPS_DATA_CACHE_VERSIONS", "3")),
            users_test_share=_share("MLOPS_USERS_TEST_SHARE", 0.2),
            alertmanager_url=os.environ.get("MLOPS_ALERTMANAGER_URL", "").strip(),
        )


def _share(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number from 0 up to (not including) 1, not {raw!r}")
    return value
