"""The Prefect flows: `train` and `retrain`.

Tasks that do I/O (git, DVC, S3, MLflow, PostgreSQL) retry; training has a
timeout instead. Progress (epoch, loss) goes to the flow's logs, and the
promotion decision to a version tag and a Prefect markdown artifact.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from . import dataset, live
from .config import WATCH_ITEMS, WATCH_MARGIN, Settings
from .datarepo import DataRepo, DataVersion
from .tracking import (
    MNIST,
    USERS,
    Decision,
    Evaluated,
    EvaluatedSet,
    LoggedRun,
    Trained,
    log_training_run,
    register_and_decide,
)
from .train import (
    EpochResult,
    Hyperparameters,
    confusion_matrix_png,
    evaluate,
    export_onnx,
    onnx_logits,
    pick_device,
    predict,
    train_model,
)

DEFAULTS = Hyperparameters()
# Models and arrays pass between tasks in memory; nothing is cached by input.
IO_RETRIES = {"retries": 3, "retry_delay_seconds": [5, 20, 60], "cache_policy": NO_CACHE}
# Past this, an ONNX export does not compute what the PyTorch model computes.
ONNX_TOLERANCE = 1e-4
# The uploads table is shared with the web app: never wait long on its locks.
DB_TIMEOUTS = "-c lock_timeout=5s -c statement_timeout=60s"


@task(**IO_RETRIES, timeout_seconds=60)
def resolve_version(settings: Settings, requested: str | None) -> str:
    repo = DataRepo(settings)
    if requested:
        return requested
    latest = repo.latest()
    if latest is None:
        raise ValueError(f"no dataset version in {settings.data_repo_url}: publish data-v1 first")
    return latest


@task(**IO_RETRIES, timeout_seconds=900)
def fetch_data(settings: Settings, tag: str, into: Path) -> DataVersion:
    """The version's files, from the local copy of an earlier run when there is one."""
    version = DataRepo(settings).fetch_cached(tag, into)
    get_run_logger().info(
        "fetched %s (dvc md5 %s): %d training, %d test images, %d of the users' held out",
        tag,
        version.dvc_md5,
        sum(version.train_counts.values()),
        sum(version.test_counts.values()),
        sum(version.users_test_counts.values()),
    )
    return version


@task(timeout_seconds=4 * 3600, cache_policy=NO_CACHE)
def fit(version: DataVersion, hp: Hyperparameters):
    logger = get_run_logger()
    images, labels, _ = dataset.load_split(version.path, "train")
    device = pick_device(hp.device)
    logger.info("training on %d images, device %s, %s", len(labels), device, hp)

    def report(result: EpochResult) -> None:
        logger.info(
            "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f"
            " | %.1f s, %.0f images/s",
            result.epoch,
            hp.epochs,
            result.train_loss,
            result.train_accuracy,
            result.val_loss,
            result.val_accuracy,
            result.seconds,
            result.images_per_second,
        )

    model, history = train_model(images, labels, hp, on_epoch=report)
    return Trained(model, history, str(device))


@task(timeout_seconds=1800, cache_policy=NO_CACHE)
def evaluate_and_export(model, version: DataVersion, workdir: Path) -> Evaluated:
    """Accuracy, per-digit recall and a confusion matrix on MNIST's test set and on the users'
    held-out images (when the version has any); an ONNX export checked against PyTorch."""
    logger = get_run_logger()
    test_sets: list[EvaluatedSet] = []
    pngs: list[Path] = []
    mnist_logits = None
    for name, split in ((MNIST, "test"), (USERS, dataset.USERS_TEST)):
        if name == USERS and not sum(version.users_test_counts.values()):
            continue
        images, labels, _ = dataset.load_split(version.path, split)
        logits = predict(model, images)
        if name == MNIST:
            mnist_logits = logits  # the ONNX export is checked against these below
        result = evaluate(logits, labels)
        test_sets.append(EvaluatedSet(name, images, labels, result))
        pngs.append(
            confusion_matrix_png(
                result.confusion,
                workdir / f"confusion_matrix_{name}.png",
                f"{version.tag}, {name} test set: accuracy {result.accuracy:.4f}",
            )
        )
        logger.info("%s test set: accuracy %.4f on %d images", name, result.accuracy, len(labels))
    onnx_path = export_onnx(model, workdir / "model.onnx")
    difference = float(np.abs(onnx_logits(onnx_path, test_sets[0].images) - mnist_logits).max())
    if difference > ONNX_TOLERANCE:
        raise RuntimeError(
            f"ONNX outputs differ from PyTorch by {difference:.2e} (> {ONNX_TOLERANCE})"
        )
    logger.info("ONNX max |diff| %.2e", difference)
    return Evaluated(test_sets, onnx_path, difference, pngs)


@task(**IO_RETRIES, timeout_seconds=900)
def log_run(
    settings: Settings,
    version: DataVersion,
    hp: Hyperparameters,
    trained: Trained,
    evaluated: Evaluated,
) -> LoggedRun:
    logged = log_training_run(settings.experiment, version, hp, trained, evaluated)
    get_run_logger().info("MLflow run %s, model %s", logged.run_id, logged.model_uri)
    return logged


@task(**IO_RETRIES, timeout_seconds=900)
def register(
    settings: Settings, logged: LoggedRun, tag: str, test_sets: list[EvaluatedSet]
) -> Decision:
    decision = register_and_decide(
        settings.registered_model, logged, tag, test_sets, shadow=settings.shadow_predictions > 0
    )
    get_run_logger().info(
        "model %s version %s: %s", settings.registered_model, decision.version, decision.reason
    )
    create_markdown_artifact(
        markdown=decision.markdown(settings.registered_model, tag),
        key="promotion-decision",
        description=f"Promotion of {settings.registered_model} version {decision.version}",
    )
    return decision


@flow(name="train", log_prints=True)
def train(
    data_version: str | None = None,
    epochs: int = DEFAULTS.epochs,
    batch_size: int = DEFAULTS.batch_size,
    learning_rate: float = DEFAULTS.learning_rate,
    seed: int = DEFAULTS.seed,
    device: str = DEFAULTS.device,
) -> dict:
    """Train on a data version (default: the newest), log to MLflow, register, gate the alias."""
    settings = Settings.from_env()
    hp = Hyperparameters(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, device=device
    )
    tag = resolve_version(settings, data_version)
    workdir = Path(tempfile.mkdtemp(prefix="mlops-train-", dir=_work_root(settings)))
    try:
        version = fetch_data(settings, tag, settings.work_dir / "data")
        trained = fit(version, hp)
        evaluated = evaluate_and_export(trained.model, version, workdir)
        logged = log_run(settings, version, hp, trained, evaluated)
        decision = register(settings, logged, tag, evaluated.test_sets)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"data_version": tag, "run_id": logged.run_id, **asdict(decision)}


@task(**IO_RETRIES, timeout_seconds=1800)
def publish_uploads(settings: Settings) -> dict:
    """Confirmed uploads into a new dataset version, marked used with it.

    The rows are claimed, then published (git and DVC, minutes), then marked:
    each in a short statement, so reviews and feedback never wait on the flow.
    """
    import psycopg
    from mlops_uploads import retrain as uploads
    from prefect.runtime import flow_run

    logger = get_run_logger()
    if not settings.database_url:
        raise ValueError(
            "MLOPS_DATABASE_URL is not set: the retrain flow reads the uploads table from it"
        )
    # The same claimant on a retry of this task: it takes back its own claim.
    claimant = f"retrain:{flow_run.id or uuid.uuid4()}"

    def connect() -> psycopg.Connection:
        return psycopg.connect(settings.database_url, autocommit=True, options=DB_TIMEOUTS)

    with connect() as conn:
        rows = uploads.claim(conn, claimant)
    if not rows:
        return {"uploads": 0, "held_out": 0, "data_version": None, "created": False}

    held = {row.id for row in rows if dataset.held_out(row.sha256, settings.users_test_share)}

    def build(target: Path, base: Path | None) -> None:
        if base is None:
            raise ValueError("there is no dataset version to add uploads to: publish data-v1 first")
        shutil.copytree(base, target)
        for row in rows:
            split = dataset.USERS_TEST if row.id in held else "train"
            folder = target / split / str(row.reviewed_label)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"upload-{row.sha256[:16]}.png").write_bytes(row.model_input)

    try:
        published = DataRepo(settings).publish(build)
    except BaseException:
        with connect() as conn:
            uploads.release(conn, claimant)
        raise
    with connect() as conn:
        uploads.mark_used(conn, claimant, [row.id for row in rows], published.tag)
    logger.info(
        "%d confirmed uploads are now in %s (%d of them held out in %s)",
        len(rows),
        published.tag,
        len(held),
        dataset.USERS_TEST,
    )
    return {
        "uploads": len(rows),
        "held_out": len(held),
        "data_version": published.tag,
        "created": published.created,
    }


@flow(name="retrain", log_prints=True)
def retrain(
    force: bool = False,
    epochs: int = DEFAULTS.epochs,
    batch_size: int = DEFAULTS.batch_size,
    learning_rate: float = DEFAULTS.learning_rate,
    seed: int = DEFAULTS.seed,
    device: str = DEFAULTS.device,
) -> dict:
    """Fold confirmed user uploads into a new data version and train on it.

    With nothing new confirmed it stops, unless force=True (then it trains on the newest version).
    """
    settings = Settings.from_env()
    logger = get_run_logger()
    outcome = publish_uploads(settings)
    if outcome["uploads"] == 0 and not force:
        logger.info("no new confirmed uploads since the last data version: nothing to retrain")
        return {"skipped": True, **outcome}
    trained = train(
        data_version=outcome["data_version"],
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        device=device,
    )
    return {"skipped": False, **outcome, **trained}


@flow(name="watch", log_prints=True)
def watch(items: int = WATCH_ITEMS, margin: float = WATCH_MARGIN) -> dict:
    """The candidate in shadow mode decided on (live.judge_candidate), then the production
    version on trial: moved back when its live accuracy falls short (live.check)."""
    import psycopg
    from mlflow import MlflowClient

    settings = Settings.from_env()
    logger = get_run_logger()
    if not settings.database_url:
        raise ValueError("MLOPS_DATABASE_URL is not set: the watch reads the uploads table")
    client = MlflowClient()
    with psycopg.connect(settings.database_url, autocommit=True, options=DB_TIMEOUTS) as conn:
        shadow = live.judge_candidate(
            client,
            conn,
            settings.registered_model,
            settings.shadow_predictions,
            settings.shadow_hours,
        )
        result = live.check(client, conn, settings.registered_model, items, margin)
    if shadow.action in ("promoted", "rejected"):
        logger.warning("shadow mode of %s: %s", settings.registered_model, shadow.reason)
        create_markdown_artifact(
            markdown=f"# Model `{settings.registered_model}`: shadow mode\n\n{shadow.reason}",
            key="shadow-decision",
            description=f"Version {shadow.version} {shadow.action} after shadow mode",
        )
    elif shadow.action == "waiting":
        logger.info("%s", shadow.reason)
    if result.action == "rolled back":
        logger.error("ROLLBACK of %s: %s", settings.registered_model, result.reason)
        create_markdown_artifact(
            markdown=f"# Model `{settings.registered_model}`: rollback\n\n{result.reason}",
            key="rollback",
            description=f"Version {result.version} rolled back to {result.previous}",
        )
        if settings.alertmanager_url:
            live.alert(settings.alertmanager_url, settings.registered_model, result)
    else:
        logger.info("%s", result.reason)
    return {**asdict(result), "shadow": asdict(shadow)}


def _work_root(settings: Settings) -> str:
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    return str(settings.work_dir)
