"""Drive and check training runs on the workers from the controller.

    python check_worker.py online                  the worker is ONLINE in its pool
    python check_worker.py start                   start a run, print its id once it trains
    python check_worker.py await-end FLOW_RUN_ID   wait for its final state, print it
    python check_worker.py watch                   the watch deployment: on a schedule, and a
                                                   run of it completes on the worker

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
    os.environ["MLFLOW_TRACKING_USERNAME"] = spec["mlflow"]["worker"]["username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = spec["mlflow"]["worker"]["password"]


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


async def watch_schedules() -> list[dict]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployment = await client.read_deployment_by_name("watch/watch")
    return [
        {"active": schedule.active, "interval": getattr(schedule.schedule, "interval", None)}
        for schedule in deployment.schedules
    ]


async def running_tasks(flow_run_id: str) -> list[str]:
    """Names of the flow run's task runs that are running now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return [run.name for run in runs if run.state and run.state.type.value == "RUNNING"]


def main(argv: list[str]) -> int:
    spec = json.load(sys.stdin)
    setup(spec)
    command = argv[0]
    if command == "online":
        found = asyncio.run(workers("cpu-pool"))
        ok = any(w["name"] == spec["worker"] and w["status"] == "ONLINE" for w in found)
        print(json.dumps({"workers": found, "ok": ok}))
        return 0 if ok else 1
    if command == "start":
        from prefect.deployments import run_deployment

        run = run_deployment("train/train", parameters={"epochs": 3}, timeout=0)
        deadline = time.monotonic() + 600
        tasks: list[str] = []
        while time.monotonic() < deadline:
            # Killed while it trains: the longest part of a run, and the one a crash must not hang.
            tasks = asyncio.run(running_tasks(str(run.id)))
            if any(name.startswith("fit") for name in tasks):
                print(json.dumps({"flow_run_id": str(run.id), "running": tasks, "ok": True}))
                return 0
            time.sleep(1)
        print(json.dumps({"flow_run_id": str(run.id), "running": tasks, "ok": False}))
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
    if command == "watch":
        from prefect.deployments import run_deployment

        schedules = asyncio.run(watch_schedules())
        run = run_deployment("watch/watch", timeout=600)
        state = run.state.type.value
        ok = state == "COMPLETED" and any(s["active"] for s in schedules)
        result = None
        if state == "COMPLETED":
            try:
                result = run.state.result()
            except Exception as error:  # results stay with the worker: the state is enough
                result = f"not readable here ({error.__class__.__name__})"
        print(
            json.dumps(
                {"schedules": schedules, "state": state, "result": result, "ok": ok}, default=str
            )
        )
        return 0 if ok else 1
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
