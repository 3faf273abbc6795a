"""Check the server host's MLflow and Prefect from another host (the controller).

Usage (the spec, with the credentials, comes on stdin as JSON):
    python check_server.py check        accounts, artifacts, registry, auth, Prefect
    python check_server.py mlflow       the MLflow half of `check` (after MLflow was killed)
    python check_server.py prefect      the Prefect half of `check` (after Prefect was killed)
    python check_server.py still-there  the experiment and artifact of `check` survive

Spec: {"mlflow_url", "prefect_api_url", "prefect_auth_string",
       "mlflow": {"worker": {"username", "password"}, "web": {...}},
       "s3": {"endpoint", "region", "bucket", "access_key", "secret_key"},
       "work_pools": [...], "state_dir": path}
Prints one JSON report; exits 1 when a check failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import requests

SMALL_FLOW = """
from prefect import flow, get_run_logger

@flow(name="server-verify")
def server_verify(x: int) -> int:
    get_run_logger().info("verifying with %s", x)
    return x * 2

state = server_verify(21, return_state=True)
print(state.state_details.flow_run_id, state.type.value, state.result())
"""


class Checks:
    def __init__(self, spec: dict):
        self.spec = spec
        self.results: dict[str, object] = {}
        self.failures: list[str] = []

    def check(self, name: str, ok: bool, detail: object = None) -> None:
        self.results[name] = detail if detail is not None else ok
        if not ok:
            self.failures.append(f"{name}: {detail}")

    def as_user(self, role: str):
        """An MlflowClient signed in as one of the service accounts."""
        account = self.spec["mlflow"][role]
        os.environ["MLFLOW_TRACKING_USERNAME"] = account["username"]
        os.environ["MLFLOW_TRACKING_PASSWORD"] = account["password"]
        from mlflow import MlflowClient

        return MlflowClient(
            tracking_uri=self.spec["mlflow_url"], registry_uri=self.spec["mlflow_url"]
        )

    def status_of(self, call) -> int:
        from mlflow.exceptions import MlflowException

        try:
            call()
        except MlflowException as error:
            return error.get_http_status_code()
        return 200

    def s3_keys(self, prefix: str) -> list[str]:
        s3 = self.spec["s3"]
        client = boto3.client(
            "s3",
            endpoint_url=s3["endpoint"],
            region_name=s3["region"],
            aws_access_key_id=s3["access_key"],
            aws_secret_access_key=s3["secret_key"],
        )
        listing = client.list_objects_v2(Bucket=s3["bucket"], Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", [])]

    def mlflow(self) -> None:
        url = self.spec["mlflow_url"]
        anonymous = requests.get(
            f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30
        )
        self.check(
            "mlflow anonymous request is 401", anonymous.status_code == 401, anonymous.status_code
        )

        worker = self.as_user("worker")
        name = f"server-verify-{uuid.uuid4().hex[:8]}"
        experiment_id = worker.create_experiment(name)
        run = worker.create_run(experiment_id)
        run_id = run.info.run_id
        worker.log_param(run_id, "data_version", "data-v0")
        for step, value in enumerate((0.5, 0.75, 0.9)):
            worker.log_metric(run_id, "accuracy", value, step=step)
        with tempfile.TemporaryDirectory() as scratch:
            note = Path(scratch) / "note.txt"
            note.write_text(f"artifact of {run_id}\n")
            worker.log_artifact(run_id, str(note), artifact_path="notes")
        worker.set_terminated(run_id)
        history = [m.value for m in worker.get_metric_history(run_id, "accuracy")]
        self.check("worker logged params and metrics", history == [0.5, 0.75, 0.9], history)

        # Proxied artifacts: the client never held S3 keys; the object lands in the bucket.
        keys = self.s3_keys(f"{experiment_id}/")
        artifact_keys = [k for k in keys if k.endswith("/notes/note.txt") and run_id in k]
        self.check("artifact object in the MLflow bucket", len(artifact_keys) == 1, artifact_keys)

        model = f"server-verify-model-{uuid.uuid4().hex[:8]}"
        worker.create_registered_model(model)
        version = worker.create_model_version(model, f"runs:/{run_id}/notes", run_id=run_id)
        worker.set_registered_model_alias(model, "production", version.version)
        aliased = worker.get_model_version_by_alias(model, "production")
        self.check(
            "worker registered a version and set an alias", aliased.version == version.version
        )

        web = self.as_user("web")
        read_back = web.get_run(run_id).data.params.get("data_version")
        self.check("web reads runs", read_back == "data-v0", read_back)
        by_alias = web.get_model_version_by_alias(model, "production").version
        self.check("web reads the registry", by_alias == version.version, by_alias)
        denied = {
            "log a metric": self.status_of(lambda: web.log_metric(run_id, "accuracy", 0.1)),
            "set an alias": self.status_of(
                lambda: web.set_registered_model_alias(model, "production", version.version)
            ),
            "delete the experiment": self.status_of(lambda: web.delete_experiment(experiment_id)),
        }
        self.check("web writes are refused with 403", set(denied.values()) == {403}, denied)

        (Path(self.spec["state_dir"]) / "server-check.json").write_text(
            json.dumps({"experiment_id": experiment_id, "run_id": run_id, "name": name})
        )

    def prefect(self) -> None:
        api = self.spec["prefect_api_url"]
        user, password = self.spec["prefect_auth_string"].split(":", 1)
        with_auth = requests.get(f"{api}/health", auth=(user, password), timeout=30)
        self.check(
            "prefect /api/health with the auth string",
            with_auth.status_code == 200,
            with_auth.status_code,
        )
        # Prefect answers /health and /ready without auth on purpose (liveness
        # probes); every other endpoint needs the auth string.
        self.results["prefect /api/health without auth (exempt by design)"] = requests.get(
            f"{api}/health", timeout=30
        ).status_code
        for method, path in (("POST", "/flows/filter"), ("GET", "/work_pools/cpu-pool")):
            without = requests.request(method, f"{api}{path}", json={}, timeout=30)
            wrong = requests.request(
                method, f"{api}{path}", json={}, auth=(user, "wrong"), timeout=30
            )
            self.check(
                f"prefect {method} {path} without the auth string is 401",
                without.status_code == 401 and wrong.status_code == 401,
                {"none": without.status_code, "wrong": wrong.status_code},
            )
        for pool in self.spec["work_pools"]:
            answer = requests.get(f"{api}/work_pools/{pool}", auth=(user, password), timeout=30)
            kind = answer.json().get("type") if answer.ok else answer.status_code
            self.check(f"work pool {pool} exists (process)", kind == "process", kind)

        env = dict(
            os.environ,
            PREFECT_API_URL=api,
            PREFECT_API_AUTH_STRING=self.spec["prefect_auth_string"],
            PREFECT_HOME=tempfile.mkdtemp(prefix="prefect-home-"),
        )
        started = time.monotonic()
        ran = subprocess.run(
            [sys.executable, "-c", SMALL_FLOW], env=env, capture_output=True, text=True, timeout=300
        )
        parts = ran.stdout.split()
        ok = (
            ran.returncode == 0 and len(parts) >= 3 and parts[1] == "COMPLETED" and parts[2] == "42"
        )
        self.check(
            "a flow run from this client completes", ok, ran.stdout.strip() or ran.stderr[-500:]
        )
        if ok:
            recorded = requests.get(
                f"{api}/flow_runs/{parts[0]}", auth=(user, password), timeout=30
            )
            state = (
                recorded.json().get("state", {}).get("type")
                if recorded.ok
                else recorded.status_code
            )
            self.check("the server recorded the flow run", state == "COMPLETED", state)
        self.results["flow run seconds"] = round(time.monotonic() - started, 1)

    def still_there(self) -> None:
        saved = json.loads((Path(self.spec["state_dir"]) / "server-check.json").read_text())
        worker = self.as_user("worker")
        experiment = worker.get_experiment(saved["experiment_id"])
        self.check("experiment still there", experiment.name == saved["name"], experiment.name)
        artifacts = [a.path for a in worker.list_artifacts(saved["run_id"], "notes")]
        self.check("artifact still listed", artifacts == ["notes/note.txt"], artifacts)
        keys = self.s3_keys(f"{saved['experiment_id']}/")
        self.check(
            "artifact object still in the bucket",
            any(k.endswith("notes/note.txt") for k in keys),
            keys,
        )


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    steps = {
        "check": ("mlflow", "prefect"),
        "mlflow": ("mlflow",),
        "prefect": ("prefect",),
        "still-there": ("still_there",),
    }
    if command not in steps:
        print(f"unknown command {command}", file=sys.stderr)
        return 2
    checks = Checks(json.load(sys.stdin))
    for step in steps[command]:
        getattr(checks, step)()
    print(json.dumps({"command": command, "results": checks.results, "failures": checks.failures}))
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
