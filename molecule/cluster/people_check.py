"""People with named accounts, checked from the controller (a laptop, for the scientist).

    python people_check.py accounts     alice (reviewer) and bob (scientist) log in with their
                                        own passwords; alice's review is recorded under her
                                        name; bob logs a run and registers a candidate, and
                                        is refused the production alias (403)
    python people_check.py laptop       as bob, with the settings the platform wrote for him:
                                        a data version fetched by tag (git over SSH with his
                                        key, DVC with his read-only keys), a write to the DVC
                                        store refused and one to his scratch prefix accepted,
                                        a train run on the worker pool with his parameters,
                                        and the example notebook, headless
    python people_check.py browser      a person in Chromium that trusts the platform's CA:
                                        upload a digit through the edge, see the result, say
                                        what it is; a Chromium that does not trust it is
                                        refused (ERR_CERT_AUTHORITY_INVALID)
    python people_check.py gone         alice, removed from the list, is refused everywhere

With an edge, every URL is the edge's (HTTPS, the platform's CA the only trust
anchor: spec "ca", and bob's settings name it for his tools).
The spec comes on stdin as JSON; one JSON line is printed; exit 1 on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import requests
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The browser steps the web app's own browser test takes.
sys.path.insert(0, str(ROOT / "serving" / "tests"))


def settings(path: str) -> dict:
    """A person's settings file: NAME="value" lines."""
    found = {}
    for line in Path(path).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            found[name] = value.strip('"')
    return found


def seven() -> bytes:
    """A dark 7 on light paper, as a PNG."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("L", (280, 280), 240)
    ImageDraw.Draw(image).line([(60, 60), (220, 60), (110, 230)], fill=20, width=26)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def web_login(web: str, username: str, password: str) -> int:
    session = requests.Session()
    page = session.get(f"{web}/login", timeout=30).text
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    answer = session.post(
        f"{web}/login",
        data={"csrf_token": token, "username": username, "password": password},
        # As a browser sends it (the app's Referrer-Policy is same-origin): over HTTPS the
        # CSRF check also wants the form posted from the app's own origin.
        headers={"Referer": f"{web}/login"},
        allow_redirects=False,
        timeout=30,
    )
    return answer.status_code


def mlflow_login(url: str, username: str, password: str) -> int:
    return requests.get(
        f"{url}/api/2.0/mlflow/users/current", auth=(username, password), timeout=30
    ).status_code


def accounts(spec: dict) -> dict:
    alice, bob = spec["alice"], spec["bob"]
    web, mlflow_url = spec["web_url"], spec["mlflow_url"]
    result = {
        "alice_web_login": web_login(web, "alice", alice),
        "bob_web_login": web_login(web, "bob", bob),
        "alice_mlflow_login": mlflow_login(mlflow_url, "alice", alice),
        "bob_mlflow_login": mlflow_login(mlflow_url, "bob", bob),
    }
    # alice reviews an upload: the row names her.
    image = seven() + uuid.uuid4().bytes  # a file no one sent before
    predicted = requests.post(
        f"{web}/api/v1/predict", files={"file": ("seven.png", image)}, timeout=30
    ).json()
    reviewed = requests.post(
        f"{web}/api/v1/review",
        json={
            "upload_id": predicted["upload_id"],
            "action": "confirm",
            "seen_label": predicted["digit"],
        },
        auth=("alice", alice),
        timeout=30,
    ).json()
    result["review_recorded_as"] = reviewed.get("reviewer")
    # Through the edge (HTTPS) the session cookie is only ever sent back over HTTPS.
    cookie = requests.get(f"{web}/login", timeout=30).headers.get("Set-Cookie", "")
    result["secure_cookie"] = "; Secure" in cookie

    # bob logs a run and registers a candidate; the production alias is not his to move.
    os.environ.update(
        MLFLOW_TRACKING_URI=mlflow_url, MLFLOW_TRACKING_USERNAME="bob", MLFLOW_TRACKING_PASSWORD=bob
    )
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    mlflow.set_experiment("mnist-bob")
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as scratch:
        mlflow.log_metric("test_accuracy", 0.5)
        (Path(scratch) / "note.txt").write_text("bob's idea\n")
        mlflow.log_artifact(str(Path(scratch) / "note.txt"), artifact_path="model")
    candidate = client.create_model_version(
        "mnist-candidates", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    result["bob_candidate"] = candidate.version
    try:
        production = client.get_model_version_by_alias("mnist", "production").version
        client.set_registered_model_alias("mnist", "production", production)
        result["bob_sets_production"] = 200
    except MlflowException as error:
        result["bob_sets_production"] = error.get_http_status_code()
    result["ok"] = (
        result["alice_web_login"] == 302
        and result["bob_web_login"] == 401
        and result["alice_mlflow_login"] == 200
        and result["bob_mlflow_login"] == 200
        and result["review_recorded_as"] == "alice"
        and result["bob_sets_production"] == 403
        and result["secure_cookie"] == web.startswith("https://")
    )
    return result


def laptop(spec: dict) -> dict:
    env = {
        **os.environ,
        **settings(spec["bob_settings"]),
        "GIT_SSH_COMMAND": (
            f"ssh -i {spec['bob_key']} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no"
            " -o UserKnownHostsFile=/dev/null"
        ),
        "PREFECT_HOME": tempfile.mkdtemp(prefix="prefect-bob-"),
        "MLOPS_WORK_DIR": tempfile.mkdtemp(prefix="bob-work-"),
    }
    result = {}
    with tempfile.TemporaryDirectory() as scratch:
        fetched = subprocess.run(
            [str(BIN / "mlops-flows"), "data", "fetch", "data-v2", f"{scratch}/v2"],
            env=env,
            capture_output=True,
            text=True,
        )
        result["fetch"] = (
            json.loads(fetched.stdout) if fetched.returncode == 0 else fetched.stderr[-500:]
        )
    s3 = boto3.client(
        "s3",
        endpoint_url=env["MLOPS_S3_ENDPOINT"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
        verify=env.get("AWS_CA_BUNDLE") or None,
    )
    bucket = env["MLOPS_DVC_BUCKET"]
    for key, name in (
        ("mnist/intruder.txt", "write_outside_scratch"),
        ("scratch/bob/idea.txt", "write_scratch"),
    ):
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"bob")
            result[name] = "allowed"
        except ClientError as error:
            result[name] = error.response.get("Error", {}).get("Code", "refused")
    # The deployment run trains on the worker while the notebook trains here
    # (its output to files: a full pipe would stall it).
    run_log = Path(env["MLOPS_WORK_DIR"]) / "deployment-run"
    with open(f"{run_log}.out", "w") as out, open(f"{run_log}.err", "w") as err:
        deployment_run = subprocess.Popen(
            [
                str(BIN / "mlops-flows"),
                "run",
                "train",
                "--pool",
                "cpu-pool",
                "--epochs",
                "1",
                "--batch-size",
                "128",
                "--timeout",
                "1800",
            ],
            env=env,
            stdout=out,
            stderr=err,
        )
    import nbformat
    from nbclient import NotebookClient

    os.environ.update(
        {k: v for k, v in env.items() if k.startswith(("MLFLOW", "MLOPS", "AWS", "GIT", "PREFECT"))}
    )
    os.environ.update(MLOPS_NOTEBOOK_EPOCHS="1", MLOPS_NOTEBOOK_DATA_VERSION="data-v1")
    notebook = nbformat.read(ROOT / "flows" / "notebooks" / "laptop.ipynb", as_version=4)
    try:
        NotebookClient(notebook, timeout=900, kernel_name="python3").execute()
        result["notebook"] = "ran"
    except Exception as error:  # a failed cell: the report says which
        result["notebook"] = f"{type(error).__name__}: {str(error)[-500:]}"
    ran_ok = deployment_run.wait(timeout=1800) == 0
    output = Path(f"{run_log}.out" if ran_ok else f"{run_log}.err").read_text()
    result["run"] = json.loads(output)["state"] if ran_ok else output[-800:]
    result["ok"] = (
        isinstance(result["fetch"], dict)
        and result["fetch"]["train"] > 0
        and result["write_outside_scratch"] == "AccessDenied"
        and result["write_scratch"] == "allowed"
        and result["run"] == "COMPLETED"
        and result["notebook"] == "ran"
    )
    return result


def browser(spec: dict) -> dict:
    from browser import chromium, upload_and_give_feedback

    screenshots = ROOT / "test-output"
    screenshots.mkdir(exist_ok=True)
    result = {}
    with tempfile.TemporaryDirectory() as scratch:
        digit = Path(scratch) / "seven.png"
        digit.write_bytes(seven())
        with chromium(trusted_ca=spec["ca"]) as trusting:
            page = trusting.new_page(viewport={"width": 1100, "height": 900})
            upload_id, predicted = upload_and_give_feedback(
                page, spec["web_url"], digit, 7, screenshots, prefix="edge-"
            )
            result.update(upload=upload_id, predicted=predicted, url=page.url)
            result["https"] = page.url.startswith("https://")
        with chromium() as untrusting:
            page = untrusting.new_page()
            try:
                page.goto(spec["web_url"] + "/")
                result["untrusting_browser"] = "page opened"
            except Exception as error:  # Playwright's Error: the net:: code is in its message
                result["untrusting_browser"] = str(error).splitlines()[0]
    result["ok"] = result["https"] and "ERR_CERT_AUTHORITY_INVALID" in result["untrusting_browser"]
    return result


def gone(spec: dict) -> dict:
    result = {
        "alice_web_login": web_login(spec["web_url"], "alice", spec["alice"]),
        "alice_mlflow_login": mlflow_login(spec["mlflow_url"], "alice", spec["alice"]),
        "bob_web_login_still_refused": web_login(spec["web_url"], "bob", spec["bob"]),
        "bob_mlflow_login": mlflow_login(spec["mlflow_url"], "bob", spec["bob"]),
    }
    result["ok"] = (
        result["alice_web_login"] == 401
        and result["alice_mlflow_login"] == 401
        and result["bob_mlflow_login"] == 200
    )
    return result


def main(argv: list[str]) -> int:
    spec = json.load(sys.stdin)
    if spec.get("ca"):  # requests (and MLflow's client) trust the edge's CA, nothing else
        os.environ["REQUESTS_CA_BUNDLE"] = spec["ca"]
    steps = {"accounts": accounts, "laptop": laptop, "browser": browser, "gone": gone}
    report = steps[argv[0]](spec)
    print(json.dumps({"step": argv[0], **report}, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
