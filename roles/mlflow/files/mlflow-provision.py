#!/usr/bin/env python3
"""Create MLflow's service accounts, experiments, registered models and grants, idempotently.

Runs on the server host with the MLflow venv's Python against the local
server, as the admin (MLFLOW_TRACKING_USERNAME / _PASSWORD in the
environment). The spec comes on stdin as JSON (passwords included, so the
calling task has no_log); prints one JSON line {"changed": bool, "actions": [...]}
with no secret in it.

Spec: {"url": ..., "users": {name: password},
       "experiments": [name], "registered_models": [name],
       "grants": {name: permission}}
"""

import json
import sys

import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient


def password_works(url: str, username: str, password: str) -> bool:
    answer = requests.get(
        f"{url}/api/2.0/mlflow/users/current", auth=(username, password), timeout=30
    )
    return answer.status_code == 200


def main() -> int:
    spec = json.load(sys.stdin)
    url = spec["url"]
    auth = AuthServiceClient(url)
    tracking = MlflowClient(tracking_uri=url, registry_uri=url)
    actions = []

    for username, password in sorted(spec["users"].items()):
        try:
            auth.get_user(username)
        except MlflowException:
            auth.create_user(username, password)
            actions.append(f"created user {username}")
            continue
        if not password_works(url, username, password):
            auth.update_user_password(username, password)
            actions.append(f"reset the password of {username}")

    resources = []
    for name in spec["experiments"]:
        experiment = tracking.get_experiment_by_name(name)
        if experiment is None:
            experiment_id = tracking.create_experiment(name)
            actions.append(f"created experiment {name}")
        else:
            experiment_id = experiment.experiment_id
        resources.append(("experiment", experiment_id, name))
    for name in spec["registered_models"]:
        try:
            tracking.get_registered_model(name)
        except MlflowException:
            tracking.create_registered_model(name)
            actions.append(f"created registered model {name}")
        resources.append(("registered_model", name, name))

    for username, permission in sorted(spec["grants"].items()):
        for resource_type, resource_id, name in resources:
            current = auth.get_user_permission(username, resource_type, resource_id).permission
            if current != permission:
                auth.grant_user_permission(username, resource_type, resource_id, permission)
                actions.append(f"granted {permission} on {resource_type} {name} to {username}")

    print(json.dumps({"changed": bool(actions), "actions": actions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
