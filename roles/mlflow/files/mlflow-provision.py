#!/usr/bin/env python3
"""Create MLflow's accounts, experiments, registered models and grants, idempotently.

Runs on the server host with the MLflow venv's Python against the local
server, as the admin (MLFLOW_TRACKING_USERNAME / _PASSWORD in the
environment). The spec comes on stdin as JSON (passwords included, so the
calling task has no_log); prints one JSON line {"changed": bool, "actions": [...]}
with no secret in it.

Spec: {"url": ..., "users": {name: password}  (service accounts and people alike),
       "experiments": [name], "registered_models": [name],
       "grants": {user: permission}  (service accounts, on those experiments and models),
       "people": [{"name", "roles"}], "role_grants": {role: {"experiments": {name: permission},
                                                            "registered_models": {name: permission},
                                                            "own_experiment": permission}},
       "people_file": path}
A person's own experiment is named `<first experiment>-<person>`. People who
were provisioned before (people_file) and are no longer listed are deleted.
"""

import json
import sys
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient


def password_works(url: str, username: str, password: str) -> bool:
    answer = requests.get(
        f"{url}/api/2.0/mlflow/users/current", auth=(username, password), timeout=30
    )
    return answer.status_code == 200


def person_grants(spec: dict, person: dict) -> list[tuple[str, str, str]]:
    """(resource type, name, permission) a person's roles give; the strongest wins per resource."""
    order = ["NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE"]
    best: dict[tuple[str, str], str] = {}
    for role in person["roles"]:
        grants = spec["role_grants"].get(role, {})
        wanted = [("experiment", name, p) for name, p in grants.get("experiments", {}).items()]
        wanted += [
            ("registered_model", name, p) for name, p in grants.get("registered_models", {}).items()
        ]
        if grants.get("own_experiment"):
            wanted.append(("experiment", own_experiment(spec, person), grants["own_experiment"]))
        for kind, name, permission in wanted:
            current = best.get((kind, name), "NO_PERMISSIONS")
            if order.index(permission) > order.index(current):
                best[(kind, name)] = permission
    return [(kind, name, permission) for (kind, name), permission in sorted(best.items())]


def own_experiment(spec: dict, person: dict) -> str:
    return f"{spec['experiments'][0]}-{person['name']}"


def main() -> int:
    spec = json.load(sys.stdin)
    spec.setdefault("role_grants", {})
    url = spec["url"]
    auth = AuthServiceClient(url)
    tracking = MlflowClient(tracking_uri=url, registry_uri=url)
    actions = []
    people = spec.get("people", [])

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

    if spec.get("people_file"):
        people_file = Path(spec["people_file"])
        before = set(json.loads(people_file.read_text())) if people_file.exists() else set()
        for gone in sorted(before - {person["name"] for person in people}):
            try:
                auth.delete_user(gone)
                actions.append(f"deleted user {gone} (no longer in mlops_people)")
            except MlflowException:
                pass  # already gone
        people_file.write_text(json.dumps(sorted(person["name"] for person in people)))

    experiments = spec["experiments"] + [
        own_experiment(spec, person)
        for person in people
        if spec["role_grants"].get("scientist") and "scientist" in person["roles"]
    ]
    models = list(
        dict.fromkeys(
            spec["registered_models"]
            + [
                name
                for grants in spec["role_grants"].values()
                for name in grants.get("registered_models", {})
            ]
        )
    )
    ids = {}
    for name in experiments:
        experiment = tracking.get_experiment_by_name(name)
        if experiment is None:
            ids[name] = tracking.create_experiment(name)
            actions.append(f"created experiment {name}")
        else:
            ids[name] = experiment.experiment_id
    for name in models:
        try:
            tracking.get_registered_model(name)
        except MlflowException:
            tracking.create_registered_model(name)
            actions.append(f"created registered model {name}")

    wanted = [
        (user, kind, name, permission)
        for user, permission in sorted(spec["grants"].items())
        for kind, names in (
            ("experiment", spec["experiments"]),
            ("registered_model", spec["registered_models"]),
        )
        for name in names
    ]
    wanted += [
        (person["name"], kind, name, permission)
        for person in people
        for kind, name, permission in person_grants(spec, person)
    ]
    for user, kind, name, permission in wanted:
        resource_id = ids[name] if kind == "experiment" else name
        try:
            current = auth.get_user_permission(user, kind, resource_id).permission
        except MlflowException:
            current = None
        if current != permission:
            auth.grant_user_permission(user, kind, resource_id, permission)
            actions.append(f"granted {permission} on {kind} {name} to {user}")

    print(json.dumps({"changed": bool(actions), "actions": actions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
