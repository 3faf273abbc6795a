"""MLflow: log a training run, register its model, and decide on promotion.

Every model version holds the PyTorch model (with signature and input
example) and, in `extra_files/model.onnx`, its ONNX export: the web host
serves that file with ONNX Runtime. Aliases replace MLflow's deprecated
stages.

The gate is two-sided. The candidate and the version holding `production`
are both scored now, on the same test sets: MNIST's test set and, once
uploads were confirmed, the users' own held-out images (dataset.USERS_TEST).
The alias moves only when, on every test set, the candidate scores at least
production's accuracy minus that set's tolerance (tolerances()). The first
version is always promoted.

In shadow mode (register_and_decide(shadow=True)) a version that passes the
gate gets the alias `candidate` instead: the web hosts run it beside
production on live requests, and the watch flow moves `production` to it
later (live.judge_candidate).
"""

from __future__ import annotations

import importlib.metadata
import math
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from .datarepo import DataVersion
from .train import EpochResult, Evaluation, Hyperparameters, evaluate, onnx_logits, to_tensor

PRODUCTION = "production"
# Shadow mode: the version that passed the gate and predicts beside production.
CANDIDATE = "candidate"
SHADOW_STARTED_TAG = "shadow_started"  # when it got the alias (ISO 8601, UTC)
# On a promoted version: the version it replaced (live.py may move the alias back to it).
PREVIOUS_TAG = "previous_production"
ONNX_IN_MODEL = "extra_files/model.onnx"
MNIST = "mnist"
USERS = "users"
# MNIST's tolerance: its 1,000 test images resolve differences of a few tenths of a point.
MNIST_TOLERANCE = 0.002
# Once the users' test set holds this many images, it counts for more: MNIST's
# tolerance widens to MNIST_TOLERANCE_USERS_DECIDE, so that a model that learned
# the users' handwriting is not refused for a small loss on MNIST.
USERS_DECISIVE_IMAGES = 200
MNIST_TOLERANCE_USERS_DECIDE = 0.01
# The users' tolerance: two standard errors of an accuracy near 0.9 on n images
# (2 * sqrt(0.09 / n) = 0.6 / sqrt(n)), never below two points.
USERS_TOLERANCE_FLOOR = 0.02


def tolerances(users_images: int) -> dict[str, float]:
    """How far below production the candidate may score on each test set."""
    found = {
        MNIST: MNIST_TOLERANCE_USERS_DECIDE
        if users_images >= USERS_DECISIVE_IMAGES
        else MNIST_TOLERANCE
    }
    if users_images:
        found[USERS] = max(USERS_TOLERANCE_FLOOR, 0.6 / math.sqrt(users_images))
    return found


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    model_uri: str


@dataclass(frozen=True)
class EvaluatedSet:
    """A test set and the candidate's evaluation on it."""

    name: str  # MNIST or USERS
    images: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    candidate: Evaluation = field(repr=False)


@dataclass(frozen=True)
class Trained:
    """What training produced."""

    model: object = field(repr=False)  # the torch module
    history: list[EpochResult] = field(repr=False)
    device: str = "cpu"


@dataclass(frozen=True)
class Evaluated:
    """The trained model on its test sets, and its ONNX export checked against it."""

    test_sets: list[EvaluatedSet]
    onnx_path: Path
    onnx_max_abs_diff: float
    confusion_pngs: list[Path]


@dataclass(frozen=True)
class Score:
    test_set: str
    images: int
    candidate: float
    production: float | None  # measured now; None when no version holds the alias
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.production is None or self.candidate >= self.production - self.tolerance


def gate(scores: list[Score], production_version: str | None) -> tuple[bool, str]:
    """Whether the alias moves, and why (naming the test set that decided)."""
    if production_version is None:
        return True, "No production model yet."
    failed = [score for score in scores if not score.passed]
    if failed:
        worst = failed[0]
        return False, (
            f"On the {worst.test_set} test set ({worst.images} images) the candidate scores"
            f" {worst.candidate:.4f} < {worst.production:.4f} - {worst.tolerance:.4f}:"
            f" version {production_version} keeps the alias."
        )
    within = ", ".join(
        f"{score.test_set} {score.candidate:.4f} >= {score.production:.4f} - {score.tolerance:.4f}"
        for score in scores
    )
    return True, f"Within tolerance on every test set ({within}): the alias moves."


@dataclass(frozen=True)
class Decision:
    version: str
    promoted: bool
    production_version: str | None  # the one holding the alias before
    scores: list[Score]
    reason: str
    shadowing: bool = False  # passed the gate; production's alias moves after shadow mode

    def markdown(self, model_name: str, data_version: str) -> str:
        verdict = (
            "**promoted** to `production`"
            if self.promoted
            else f"**passed the gate**: `{CANDIDATE}` in shadow mode"
            if self.shadowing
            else "**not promoted**"
        )
        before = f"version {self.production_version}" if self.production_version else "none"
        rows = [
            f"| {score.test_set} | {score.images} | {score.candidate:.4f} | "
            + (
                "- | - | - |"
                if score.production is None
                else f"{score.production:.4f} | {score.tolerance:.4f} | "
                f"{'yes' if score.passed else '**no**'} |"
            )
            for score in self.scores
        ]
        return "\n".join(
            [
                f"# Model `{model_name}` version {self.version}: {verdict}",
                "",
                f"Candidate trained on `{data_version}`; production before: {before}.",
                "",
                "| test set | images | candidate | production | tolerance | within |",
                "|---|---|---|---|---|---|",
                *rows,
                "",
                "Rule: on every test set, candidate >= production - tolerance. MNIST's tolerance"
                f" is {MNIST_TOLERANCE}, {MNIST_TOLERANCE_USERS_DECIDE} once the users' test set"
                f" holds {USERS_DECISIVE_IMAGES} images or more; the users' is"
                f" max({USERS_TOLERANCE_FLOOR}, 0.6 / sqrt(images)).",
                "",
                self.reason,
            ]
        )


def log_training_run(
    experiment: str,
    version: DataVersion,
    hp: Hyperparameters,
    trained: Trained,
    evaluated: Evaluated,
) -> LoggedRun:
    device = trained.device
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"train-{version.tag}") as run:
        mlflow.set_tags({"data_version": version.tag, "framework": "pytorch", "device": device})
        mlflow.log_params(
            {
                **hp.as_params(),
                "device_used": device,
                "data_version": version.tag,
                "data_dvc_md5": version.dvc_md5,
                "n_train": sum(version.train_counts.values()),
                "n_test": sum(version.test_counts.values()),
                "n_users_test": sum(version.users_test_counts.values()),
            }
        )
        for result in trained.history:
            mlflow.log_metrics(
                {
                    "train_loss": result.train_loss,
                    "train_accuracy": result.train_accuracy,
                    "val_loss": result.val_loss,
                    "val_accuracy": result.val_accuracy,
                    "epoch_seconds": result.seconds,
                    "images_per_second": result.images_per_second,
                },
                step=result.epoch,
            )
        metrics = {"onnx_max_abs_diff": evaluated.onnx_max_abs_diff}
        for test_set in evaluated.test_sets:
            # test_accuracy (MNIST) keeps its name; the users' set is users_test_*.
            prefix = "test" if test_set.name == MNIST else f"{test_set.name}_test"
            metrics[f"{prefix}_accuracy"] = test_set.candidate.accuracy
            metrics.update(
                {
                    f"{prefix}_recall_{digit}": recall
                    for digit, recall in enumerate(test_set.candidate.recall)
                    if not math.isnan(recall)  # a digit with no image in the set
                }
            )
        mlflow.log_metrics(metrics)
        for png in evaluated.confusion_pngs:
            mlflow.log_artifact(str(png), artifact_path="evaluation")
        example = to_tensor(np.zeros((2, 28, 28), np.uint8)).numpy()
        signature = infer_signature(example, np.zeros((2, 10), np.float32))
        info = mlflow.pytorch.log_model(
            trained.model.cpu(),
            name="model",
            signature=signature,
            input_example=example,
            extra_files=[str(evaluated.onnx_path)],
            # Named here: inferring them imports the world in a subprocess (slow).
            pip_requirements=[
                f"torch=={version_of('torch')}",
                f"torchvision=={version_of('torchvision')}",
                f"mlflow-skinny=={version_of('mlflow-skinny')}",
            ],
        )
        return LoggedRun(run_id=run.info.run_id, model_uri=info.model_uri)


def version_of(distribution: str) -> str:
    return importlib.metadata.version(distribution).split("+")[0]


def production_version(client: MlflowClient, name: str):
    return alias_version(client, name, PRODUCTION)


def download_onnx(model_uri: str, into: Path) -> Path:
    """The ONNX export stored in a model version (models:/name/version or models:/name@alias)."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into))
    path = Path(local) / ONNX_IN_MODEL
    if not path.exists():
        raise FileNotFoundError(f"{model_uri} holds no {ONNX_IN_MODEL}")
    return path


def alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register_and_decide(
    name: str,
    logged: LoggedRun,
    data_version: str,
    test_sets: list[EvaluatedSet],
    shadow: bool = False,
) -> Decision:
    """Register the run's model as a new version and move the alias when the gate allows
    (with shadow, the `candidate` alias, when a version holds `production`)."""
    client = MlflowClient()
    by_name = {test_set.name: test_set for test_set in test_sets}
    tags = {
        "data_version": data_version,
        "test_accuracy": f"{by_name[MNIST].candidate.accuracy:.4f}",
    }
    if USERS in by_name:
        tags["users_test_accuracy"] = f"{by_name[USERS].candidate.accuracy:.4f}"
    new = mlflow.register_model(logged.model_uri, name, tags=tags)
    current = production_version(client, name)
    allowed = tolerances(len(by_name[USERS].labels) if USERS in by_name else 0)
    production: dict[str, float] = {}
    if current is not None:
        with tempfile.TemporaryDirectory(prefix="mlops-production-") as scratch:
            onnx = download_onnx(f"models:/{name}/{current.version}", Path(scratch))
            for test_set in test_sets:
                logits = onnx_logits(onnx, test_set.images)
                production[test_set.name] = evaluate(logits, test_set.labels).accuracy
    scores = [
        Score(
            test_set=test_set.name,
            images=len(test_set.labels),
            candidate=test_set.candidate.accuracy,
            production=production.get(test_set.name),
            tolerance=allowed[test_set.name],
        )
        for test_set in test_sets
    ]
    before = current.version if current is not None else None
    passed, reason = gate(scores, before)
    shadowing = passed and shadow and before is not None
    if shadowing:
        reason += (
            f" Shadow mode: it first predicts beside version {before} as `{CANDIDATE}`;"
            " the watch flow moves the alias."
        )
        start_shadow(client, name, new.version)
    elif passed:
        if before is not None:
            client.set_model_version_tag(name, new.version, PREVIOUS_TAG, before)
        client.set_registered_model_alias(name, PRODUCTION, new.version)
    decision = Decision(new.version, passed and not shadowing, before, scores, reason, shadowing)
    outcome = "shadowing" if shadowing else "promoted" if decision.promoted else "not promoted"
    tag_promotion(client, name, new.version, outcome, decision.reason)
    return decision


def tag_promotion(client: MlflowClient, name: str, version: str, outcome: str, reason: str) -> None:
    """What became of a version at the gate or in shadow mode, and why (its tags)."""
    client.set_model_version_tag(name, version, "promotion", outcome)
    client.set_model_version_tag(name, version, "promotion_reason", reason)


def start_shadow(client: MlflowClient, name: str, version: str) -> None:
    """Give `version` the candidate alias; a candidate it replaces is tagged superseded."""
    older = alias_version(client, name, CANDIDATE)
    if older is not None and str(older.version) != str(version):
        tag_promotion(
            client,
            name,
            older.version,
            "superseded",
            f"Version {version} passed the gate while this one was in shadow mode.",
        )
    client.set_model_version_tag(
        name, version, SHADOW_STARTED_TAG, datetime.now(UTC).isoformat(timespec="seconds")
    )
    client.set_registered_model_alias(name, CANDIDATE, version)
