"""The production model, kept fresh: loaded from MLflow, swapped without stopping requests.

A background thread asks MLflow every few seconds which version holds the
alias; when it changed, the new version's ONNX file is downloaded and a new
ONNX Runtime session built, then swapped in with one assignment. A request
holds the Loaded object it started with, so requests in flight finish on the
model they began with.

A holder for an optional alias (shadow mode's `candidate`) unloads its model
when MLflow says no version holds the alias any more.

The web app does not need MLflow to start: each model that goes live is also
kept in `model_dir` (the ONNX file and what it is, with its sha256), and a
starting process serves that copy at once, then asks MLflow in the
background, with short timeouts. When MLflow cannot be reached, the loaded
model keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# MLflow's client retries a failed request for minutes by default: a web app
# asks again on its next poll instead. 10 s, not less: a busy single-worker
# MLflow on a loaded 2-core host took over 5 s to answer (test_reload failed).
MLFLOW_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
}
CACHE_FILE = "production.json"
# How MLflow says no version holds an alias: no such model yet, or no such alias on it.
NO_SUCH_ALIAS = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
# Where the training flow puts the ONNX export in a model version
# (mlops_flows.tracking.ONNX_IN_MODEL; tests/test_repository.py ties the two).
ONNX_IN_MODEL = "extra_files/model.onnx"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    version: str
    data_version: str
    test_accuracy: str
    sha256: str  # of the ONNX file


@dataclass(frozen=True)
class Loaded:
    info: ModelInfo
    session: object = field(repr=False)
    input_name: str
    loaded_at: float

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def data_version(self) -> str:
        return self.info.data_version

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input_name: batch})[0]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_session(onnx: Path, info: ModelInfo) -> Loaded:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # requests run in parallel threads already
    session = onnxruntime.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    return Loaded(info, session, session.get_inputs()[0].name, time.time())


class ModelHolder:
    def __init__(
        self,
        name: str,
        alias: str,
        poll_seconds: int,
        model_dir: str = "",
        on_live: Callable[[Loaded], None] | None = None,
        optional: bool = False,
    ):
        self.name = name
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.on_live = on_live  # called with each model that goes live
        self.optional = optional  # unload when no version holds the alias
        self.model_dir = Path(model_dir or tempfile.mkdtemp(prefix="mlops-model-"))
        self.current: Loaded | None = None
        self.last_check: float | None = None
        self.last_error: str | None = None  # for operators (logs, the reviewers' status page)
        self.mlflow_reachable: bool | None = None  # None: not asked yet
        self._thread: threading.Thread | None = None
        for variable, value in MLFLOW_CLIENT_DEFAULTS.items():
            os.environ.setdefault(variable, value)

    # --- the local copy ---------------------------------------------------
    def load_kept(self) -> bool:
        """Serve the copy kept by an earlier process, if it is intact. True when it went live."""
        try:
            info = ModelInfo(**json.loads((self.model_dir / CACHE_FILE).read_text()))
            onnx = self.model_dir / f"model-{info.version}.onnx"
            if sha256_of(onnx) != info.sha256:
                raise ValueError(f"{onnx} does not match its recorded sha256")
            self._go_live(open_session(onnx, info), "the copy kept on disk")
            return True
        except FileNotFoundError:
            return False
        except Exception as error:  # a damaged copy: MLflow will provide the model
            log.warning("the kept model copy is unusable (%s); waiting for MLflow", error)
            return False

    def _keep(self, onnx: Path, info: ModelInfo) -> None:
        """Keep the live model's file and description; atomic, so a crash leaves the old pair."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        target = self.model_dir / f"model-{info.version}.onnx"
        partial = target.with_suffix(f".{os.getpid()}.partial")
        shutil.copyfile(onnx, partial)
        os.replace(partial, target)
        record = self.model_dir / f"{CACHE_FILE}.{os.getpid()}.partial"
        record.write_text(json.dumps(asdict(info)))
        os.replace(record, self.model_dir / CACHE_FILE)
        for old in self.model_dir.glob("model-*.onnx"):
            if old != target:
                old.unlink(missing_ok=True)

    # --- MLflow -----------------------------------------------------------
    def refresh(self) -> bool:
        """Load the alias's version if it is not the one loaded. True when a new model went live."""
        from mlflow import MlflowClient

        try:
            wanted = MlflowClient().get_model_version_by_alias(self.name, self.alias)
        except Exception as error:  # MLflow down, or no version holds the alias yet
            self.last_check = time.time()
            self.last_error = f"{error.__class__.__name__}: {str(error)[:200]}"
            # It answered, with "no such alias": reachable, nothing to serve yet.
            self.mlflow_reachable = getattr(error, "error_code", "") in NO_SUCH_ALIAS
            if self.mlflow_reachable and self.optional and self.current is not None:
                self._unload()
            return False
        self.last_check = time.time()
        self.last_error = None
        self.mlflow_reachable = True
        if self.current is not None and self.current.version == str(wanted.version):
            return False
        self._go_live(self._download(wanted), "MLflow")
        return True

    def data_versions(self) -> dict[str, str]:
        """Which data version each registered version was trained on (from MLflow's tags);
        the loaded model's alone when MLflow does not answer."""
        from mlflow import MlflowClient

        found = {}
        if self.current is not None:
            found[self.current.version] = self.current.data_version
        try:
            for version in MlflowClient().search_model_versions(
                f"name = '{self.name}'", max_results=1000
            ):
                found[str(version.version)] = (version.tags or {}).get("data_version", "unknown")
        except Exception as error:  # the page shows what it has; the log says why
            log.warning("could not list the versions of %s: %s", self.name, error)
        return found

    def _download(self, version) -> Loaded:
        import mlflow

        # A folder of this load's own: several web processes may load the same version at once.
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.model_dir, prefix=f"v{version.version}-") as tmp:
            # The ONNX file alone: one proxied download instead of the whole MLflow
            # model's eight files (on a busy MLflow that was 8 s of a 40 s switch).
            onnx = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{self.name}/{version.version}/{ONNX_IN_MODEL}",
                    dst_path=tmp,
                )
            )
            tags = version.tags or {}
            info = ModelInfo(
                version=str(version.version),
                data_version=tags.get("data_version", "unknown"),
                test_accuracy=tags.get("test_accuracy", "unknown"),
                sha256=sha256_of(onnx),
            )
            loaded = open_session(onnx, info)
            self._keep(onnx, info)
        return loaded

    def _go_live(self, loaded: Loaded, source: str) -> None:
        self.current = loaded
        if self.on_live is not None:
            self.on_live(loaded)
        log.info(
            "model %s version %s is live (data %s), from %s",
            self.name,
            loaded.version,
            loaded.data_version,
            source,
        )

    def _unload(self) -> None:
        log.info(
            "no version of %s holds %s any more: version %s unloaded",
            self.name,
            self.alias,
            self.current.version,
        )
        self.current = None
        (self.model_dir / CACHE_FILE).unlink(missing_ok=True)
        for kept in self.model_dir.glob("model-*.onnx"):
            kept.unlink(missing_ok=True)

    def start(self) -> None:
        """Serve the kept copy now; ask MLflow in the background from then on."""
        self.load_kept()
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        if self.optional:  # a starting process loads production first, MLflow asked once at a time
            time.sleep(self.poll_seconds)
        while True:  # a daemon thread: it ends with the process
            try:
                self.refresh()
            except Exception:  # a broken download must not end the watch; the old model stays
                log.exception("loading a new model version failed; the loaded one keeps serving")
            time.sleep(self.poll_seconds)
