"""Train the demo's first model through the `train` deployment, unless one holds the alias.

Usage: playbooks/demo/first_train.py CREDENTIALS_DIR   (through the edge, published on 127.0.0.1)

Over HTTPS, trusting only the platform's CA (CREDENTIALS_DIR/ca/ca.crt).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import requests

MLFLOW = "https://127.0.0.1:5443"
PREFECT = "https://127.0.0.1:4443/api"


def main(credentials: Path) -> int:
    read = lambda name: (credentials / name).read_text().strip()  # noqa: E731
    admin = ("admin", read("mlflow/admin"))
    ca = str(credentials / "ca" / "ca.crt")
    answer = requests.get(
        f"{MLFLOW}/api/2.0/mlflow/registered-models/alias",
        params={"name": "mnist", "alias": "production"},
        auth=admin,
        timeout=30,
        verify=ca,
    )
    if answer.status_code == 200:
        version = answer.json()["model_version"]
        print(f"model mnist version {version['version']} already holds the alias production")
        return 0
    os.environ["PREFECT_API_URL"] = PREFECT
    os.environ["PREFECT_API_AUTH_STRING"] = "admin:" + read("prefect/auth_password")
    os.environ["PREFECT_API_SSL_CERT_FILE"] = ca
    from prefect.deployments import run_deployment

    print("training the first model (the train deployment, on the CPU worker) ...")
    started = time.monotonic()
    run = run_deployment("train/train", timeout=3600)
    print(f"train run {run.name}: {run.state.type.value} after {time.monotonic() - started:.0f} s")
    return 0 if run.state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
