"""Drive and check training runs on the workers from the controller.

    python check_worker.py online                  the worker is ONLINE in its pool
    python check_worker.py train                   a train deployment run (1 epoch) completes
    python check_worker.py start                   start a run, print its id once it is running
    python check_worker.py await-end FLOW_RUN_ID   wait for its final state, print it

The spec (URLs, credentials, worker name) comes on stdin as JSON; one JSON
line is printed; the exit status is 1 when the check failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time


def setup(spec: dict) -> None:
    os.environ["PREFECT_API_URL"] = spec["prefect_api_url"]
    os.environ["PREFECT_API_AUTH_STRING"] = spec["prefect_auth_string"]
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-check-worker-"))
    os.environ["MLFLOW_TRACKING_URI"] = spec["mlflow_url"]
    os.environ["MLFLOW_TRACKING_USERNAME"] = spec["mlflow"]["username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = spec["mlflow"]["password"]


async def workers(pool: str) -> list[dict]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        found = await client.read_workers_for_work_pool(pool)
    return [{"name": w.name, "status": str(w.status.value if w.status else "")} for w in found]


async def flow_run_state(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
    return run.state.type.value


def main(argv: list[str]) -> int:
    spec = json.load(sys.stdin)
    setup(spec)
    command = argv[0]
    if command == "online":
        found = asyncio.run(workers("cpu-pool"))
        ok = any(w["name"] == spec["worker"] and w["status"] == "ONLINE" for w in found)
        print(json.dumps({"workers": found, "ok": ok}))
        return 0 if ok else 1
    if command == "train":
        from mlflow import MlflowClient
        from prefect.deployments import run_deployment

        started = time.monotonic()
        run = run_deployment("train/train", parameters={"epochs": 1}, timeout=1800)
        seconds = round(time.monotonic() - started)
        state = run.state.type.value
        versions = MlflowClient().search_model_versions("name='mnist'")
        trained = [v for v in versions if v.run_id and v.tags.get("data_version")]
        newest = max(trained, key=lambda v: int(v.version)) if trained else None
        ok = state == "COMPLETED" and newest is not None
        print(
            json.dumps(
                {
                    "state": state,
                    "seconds": seconds,
                    "model_version": newest.version if newest else None,
                    "test_accuracy": newest.tags.get("test_accuracy") if newest else None,
                    "ok": ok,
                }
            )
        )
        return 0 if ok else 1
    if command == "start":
        from prefect.deployments import run_deployment

        run = run_deployment("train/train", parameters={"epochs": 3}, timeout=0)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            state = asyncio.run(flow_run_state(str(run.id)))
            if state == "RUNNING":
                time.sleep(15)  # well into the run: fetching data or training
                print(json.dumps({"flow_run_id": str(run.id), "state": state, "ok": True}))
                return 0
            time.sleep(1)
        print(json.dumps({"flow_run_id": str(run.id), "state": state, "ok": False}))
        return 1
    if command == "await-end":
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            state = asyncio.run(flow_run_state(argv[1]))
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        ok = state in ("CRASHED", "FAILED")
        print(json.dumps({"flow_run_id": argv[1], "state": state, "ok": ok}))
        return 0 if ok else 1
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
