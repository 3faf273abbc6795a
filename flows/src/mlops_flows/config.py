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
    # shadow mode (0: off): a version that passes the gate shadows production as
    # `candidate` until it made this many predictions beside it, or for shadow_hours
    shadow_predictions: int = 0
    shadow_hours: float = 24.0

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
            users_test_share=_number("MLOPS_USERS_TEST_SHARE", 0.2, below=1.0),
            alertmanager_url=os.environ.get("MLOPS_ALERTMANAGER_URL", "").strip(),
            shadow_predictions=_number("MLOPS_SHADOW_PREDICTIONS", 0, int),
            shadow_hours=_number("MLOPS_SHADOW_HOURS", 24.0),
        )


def _number(name: str, default, kind=float, below: float | None = None):
    """A setting that is a number (int or float) of at least 0, and under `below` if given."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if not (value >= 0 and (below is None or value < below)):  # NaN too
        bound = f" up to (not including) {below:g}" if below is not None else " or more"
        raise ConfigError(f"{name} must be a {kind.__name__} from 0{bound}, not {raw!r}")
    return value
