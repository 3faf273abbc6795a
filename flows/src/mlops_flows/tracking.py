"""MLflow: log a training run, register its model, and decide on promotion.

Every model version holds the PyTorch model (with signature and input
example) and, in `extra_files/model.onnx`, its ONNX export: the web host
serves that file with ONNX Runtime. The alias `production` moves to a new
version only when it scores at least the current production version's test
accuracy minus a tolerance, both measured now on the same test set (the
first version is always promoted). Aliases replace MLflow's deprecated
stages.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from .datarepo import DataVersion
from .train import EpochResult, Evaluation, Hyperparameters, evaluate, onnx_logits, to_tensor

PRODUCTION = "production"
ONNX_IN_MODEL = "extra_files/model.onnx"
PROMOTION_TOLERANCE = 0.002


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    model_uri: str


@dataclass(frozen=True)
class Decision:
    version: str
    promoted: bool
    candidate_accuracy: float
    production_version: str | None  # the one holding the alias before
    production_accuracy: float | None  # measured now, on the same test set
    reason: str

    def markdown(self, model_name: str, data_version: str) -> str:
        verdict = "**promoted** to `production`" if self.promoted else "**not promoted**"
        before = (
            f"version {self.production_version}: {self.production_accuracy:.4f}"
            if self.production_version
            else "none (first model)"
        )
        return "\n".join(
            [
                f"# Model `{model_name}` version {self.version}: {verdict}",
                "",
                "| | test accuracy |",
                "|---|---|",
                f"| candidate (version {self.version}, {data_version})"
                f" | {self.candidate_accuracy:.4f} |",
                f"| production before | {before} |",
                "",
                f"Rule: promote when candidate >= production - {PROMOTION_TOLERANCE}.",
                self.reason,
            ]
        )


def log_training_run(
    experiment: str,
    version: DataVersion,
    hp: Hyperparameters,
    history: list[EpochResult],
    test: Evaluation,
    model,
    onnx_path: Path,
    onnx_max_abs_diff: float,
    confusion_png: Path,
    device: str,
) -> LoggedRun:
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
            }
        )
        for result in history:
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
        mlflow.log_metrics(
            {
                "test_accuracy": test.accuracy,
                "onnx_max_abs_diff": onnx_max_abs_diff,
                **{f"test_recall_{digit}": recall for digit, recall in enumerate(test.recall)},
            }
        )
        mlflow.log_artifact(str(confusion_png), artifact_path="evaluation")
        example = to_tensor(np.zeros((2, 28, 28), np.uint8)).numpy()
        signature = infer_signature(example, np.zeros((2, 10), np.float32))
        info = mlflow.pytorch.log_model(
            model.cpu(),
            name="model",
            signature=signature,
            input_example=example,
            extra_files=[str(onnx_path)],
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
    try:
        return client.get_model_version_by_alias(name, PRODUCTION)
    except MlflowException:
        return None


def download_onnx(model_uri: str, into: Path) -> Path:
    """The ONNX export stored in a model version (models:/name/version or models:/name@alias)."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into))
    path = Path(local) / ONNX_IN_MODEL
    if not path.exists():
        raise FileNotFoundError(f"{model_uri} holds no {ONNX_IN_MODEL}")
    return path


def register_and_decide(
    name: str,
    logged: LoggedRun,
    data_version: str,
    candidate: Evaluation,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> Decision:
    """Register the run's model as a new version and move the alias when the gate allows."""
    client = MlflowClient()
    new = mlflow.register_model(
        logged.model_uri,
        name,
        tags={"data_version": data_version, "test_accuracy": f"{candidate.accuracy:.4f}"},
    )
    current = production_version(client, name)
    if current is None:
        decision = Decision(
            new.version, True, candidate.accuracy, None, None, "No production model yet."
        )
    else:
        with tempfile.TemporaryDirectory(prefix="mlops-production-") as scratch:
            onnx = download_onnx(f"models:/{name}/{current.version}", Path(scratch))
            production = evaluate(onnx_logits(onnx, test_images), test_labels)
        floor = production.accuracy - PROMOTION_TOLERANCE
        promoted = candidate.accuracy >= floor
        reason = f"{candidate.accuracy:.4f} {'>=' if promoted else '<'} {floor:.4f}: " + (
            "the alias moves." if promoted else f"version {current.version} keeps the alias."
        )
        decision = Decision(
            new.version, promoted, candidate.accuracy, current.version, production.accuracy, reason
        )
    if decision.promoted:
        client.set_registered_model_alias(name, PRODUCTION, new.version)
    client.set_model_version_tag(
        name, new.version, "promotion", "promoted" if decision.promoted else "not promoted"
    )
    client.set_model_version_tag(name, new.version, "promotion_reason", decision.reason)
    return decision
