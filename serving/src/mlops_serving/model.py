"""The production model, kept fresh: loaded from MLflow, swapped without stopping requests.

A background thread asks MLflow every few seconds which version holds the
alias; when it changed, the new version's ONNX file is downloaded and a new
ONNX Runtime session built, then swapped in with one assignment. A request
holds the Loaded object it started with, so requests in flight finish on
the model they began with. When MLflow cannot be reached, the loaded model
keeps serving.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ONNX_IN_MODEL = "extra_files/model.onnx"  # where the train flow stores the export
INPUT_NAME = "image"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    version: str
    data_version: str
    test_accuracy: str
    session: object = field(repr=False)
    loaded_at: float

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {INPUT_NAME: batch})[0]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


class ModelHolder:
    def __init__(
        self,
        name: str,
        alias: str,
        poll_seconds: int,
        model_dir: str = "",
        on_live: Callable[[Loaded], None] | None = None,
    ):
        self.name = name
        self.on_live = on_live  # called with each model that goes live
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.model_dir = Path(model_dir or tempfile.mkdtemp(prefix="mlops-model-"))
        self.current: Loaded | None = None
        self.last_check: float | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the alias's version if it is not the one loaded. True when a new model went live."""
        from mlflow import MlflowClient

        try:
            wanted = MlflowClient().get_model_version_by_alias(self.name, self.alias)
        except Exception as error:  # MLflow down, or no version holds the alias yet
            self.last_check = time.time()
            self.last_error = f"{error.__class__.__name__}: {str(error)[:200]}"
            return False
        self.last_check = time.time()
        self.last_error = None
        if self.current is not None and self.current.version == wanted.version:
            return False
        loaded = self._load(wanted)
        self.current = loaded
        if self.on_live is not None:
            self.on_live(loaded)
        log.info(
            "model %s version %s is live (data %s)", self.name, loaded.version, loaded.data_version
        )
        return True

    def _load(self, version) -> Loaded:
        import mlflow
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # requests run in parallel threads already
        # A folder of this load's own (several web processes may load the same version at
        # once); the session holds the model in memory, so the files go right after.
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.model_dir, prefix=f"v{version.version}-") as tmp:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{self.name}/{version.version}", dst_path=tmp
                )
            )
            session = onnxruntime.InferenceSession(
                str(local / ONNX_IN_MODEL), options, providers=["CPUExecutionProvider"]
            )
        tags = version.tags or {}
        return Loaded(
            version=str(version.version),
            data_version=tags.get("data_version", "unknown"),
            test_accuracy=tags.get("test_accuracy", "unknown"),
            session=session,
            loaded_at=time.time(),
        )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # a broken download must not end the watch; the old model stays
                log.exception("loading a new model version failed; the loaded one keeps serving")
            self._stop.wait(self.poll_seconds)
