"""What the platform holds, recorded before a restore drill and compared after it.

    python restore_check.py record     write the state to STATE_DIR/restore-before.json
    python restore_check.py compare    read it again and compare: exit 1 on any difference

The spec (URLs, credentials, a state folder, and the server's uploads table as
`rows`: a digest the verify reads with psql on the server) comes on stdin as
JSON. What is compared:
- MLflow: every run of the `mnist` experiment (params, final metrics,
  artifact listing), every registered version (run, tags), the `production`
  alias, and the sha256 of the production version's ONNX file;
- Prefect: the deployments (name, work pool, schedules);
- the object store: every object of every bucket (key, size, ETag), and each
  upload's original read back: its bytes hash to its content address;
- the uploads table (the digest of every row);
- the web app: the model version it serves; the reviewer's login still works.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import boto3
import requests


def setup(spec: dict) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = spec["mlflow_url"]
    os.environ["MLFLOW_TRACKING_USERNAME"] = spec["mlflow"]["worker"]["username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = spec["mlflow"]["worker"]["password"]


def mlflow_state() -> dict:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("mnist")
    runs = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        runs[run.info.run_id] = {
            "params": run.data.params,
            "metrics": {name: round(value, 6) for name, value in run.data.metrics.items()},
            "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
        }
    versions = {
        v.version: {"run_id": v.run_id, "tags": v.tags}
        for v in client.search_model_versions("name='mnist'")
    }
    production = client.get_model_version_by_alias("mnist", "production")
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/mnist/{production.version}", dst_path=scratch
            )
        )
        (onnx,) = sorted(local.rglob("*.onnx"))
        onnx_sha = hashlib.sha256(onnx.read_bytes()).hexdigest()
    return {
        "runs": runs,
        "versions": versions,
        "production": production.version,
        "production_onnx_sha256": onnx_sha,
    }


def prefect_state(spec: dict) -> dict:
    user, password = spec["prefect_auth_string"].split(":", 1)
    answer = requests.post(
        f"{spec['prefect_api_url']}/deployments/filter", json={}, auth=(user, password), timeout=30
    )
    answer.raise_for_status()
    return {
        d["name"]: {
            "work_pool": d.get("work_pool_name"),
            "schedules": sorted(
                json.dumps(s.get("schedule"), sort_keys=True) for s in d.get("schedules", [])
            ),
        }
        for d in answer.json()
    }


def store_state(spec: dict) -> dict:
    s3 = spec["s3_admin"]
    client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"],
        region_name=s3["region"],
    )
    state, verified = {}, 0
    for bucket in sorted(spec["buckets"].values()):
        objects = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objects += [
                [item["Key"], item["Size"], item["ETag"]] for item in page.get("Contents", [])
            ]
        state[bucket] = sorted(objects)
    for key, _, _ in state[spec["buckets"]["uploads"]]:
        if key.startswith("uploads/"):
            body = client.get_object(Bucket=spec["buckets"]["uploads"], Key=key)["Body"].read()
            if hashlib.sha256(body).hexdigest() != key.rsplit("/", 1)[1].split(".")[0]:
                raise AssertionError(f"{key}: its bytes do not hash to its address")
            verified += 1
    return {"objects": state, "uploads_verified": verified}


def web_state(spec: dict) -> dict:
    ready = requests.get(f"{spec['web_url']}/readyz", timeout=30).json()
    login = requests.post(
        f"{spec['web_url']}/api/v1/review",
        json={"upload_id": "x", "action": "bless"},
        auth=tuple(spec["reviewer"]),
        timeout=30,
    )
    return {"model_version": ready.get("model_version"), "reviewer_login": login.status_code}


def state(spec: dict) -> dict:
    store = store_state(spec)
    return {
        "mlflow": mlflow_state(),
        "prefect": prefect_state(spec),
        "objects": store["objects"],
        "uploads_rows": spec["rows"],
        "web": web_state(spec),
        "uploads_verified": store["uploads_verified"],
    }


def main(argv: list[str]) -> int:
    spec = json.load(sys.stdin)
    setup(spec)
    saved = Path(spec["state_dir"]) / "restore-before.json"
    now = state(spec)
    if argv[0] == "record":
        saved.write_text(json.dumps(now, sort_keys=True))
        summary = {
            "runs": len(now["mlflow"]["runs"]),
            "versions": len(now["mlflow"]["versions"]),
            "production": now["mlflow"]["production"],
            "objects": {bucket: len(items) for bucket, items in now["objects"].items()},
            "uploads_rows": now["uploads_rows"]["count"],
            "deployments": sorted(now["prefect"]),
            "ok": now["web"]["reviewer_login"] == 400,
        }
        print(json.dumps({"step": "record", **summary}))
        return 0 if summary["ok"] else 1
    before = json.loads(saved.read_text())
    now = json.loads(json.dumps(now, sort_keys=True))
    differences = [
        part
        for part in ("mlflow", "prefect", "objects", "uploads_rows", "web")
        if before[part] != now[part]
    ]
    print(
        json.dumps(
            {
                "step": "compare",
                "differences": differences,
                "production": now["mlflow"]["production"],
                "production_onnx_sha256": now["mlflow"]["production_onnx_sha256"][:16],
                "web_serves": now["web"]["model_version"],
                "uploads_rows": now["uploads_rows"]["count"],
                "objects": {bucket: len(items) for bucket, items in now["objects"].items()},
                "uploads_verified_byte_for_byte": now["uploads_verified"],
                "ok": not differences,
            }
        )
    )
    return 0 if not differences else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
