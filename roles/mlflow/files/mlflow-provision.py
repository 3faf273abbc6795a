#!/usr/bin/env python3
"""Create MLflow's accounts, experiments, registered models and grants, idempotently.

Runs on the server host with the MLflow venv's Python against the local
server, as the admin (MLFLOW_TRACKING_USERNAME / _PASSWORD in the
environment). The spec comes on stdin as JSON (passwords included, so the
calling task has no_log); prints one JSON line {"changed": bool, "actions": [...],
"forget_logins": bool (an account was deleted or its password reset)} with no
secret in it.

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
import os
import sys
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

# MLflow's REST API with requests alone: importing MLflow's client and its auth
# client took 9 s of CPU on every converge, more than the calls themselves.


class MLflow:
    """The few REST calls provisioning needs, as the admin (retried on 429/5xx, as
    MLflow's own client does)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (
            os.environ["MLFLOW_TRACKING_USERNAME"],
            os.environ["MLFLOW_TRACKING_PASSWORD"],
        )
        retry = Retry(
            total=5,
            backoff_factor=1,
            status_forcelist=[429, 500, 502, 503, 504],
            allowed_methods=None,
        )
        self.session.mount(self.url, HTTPAdapter(max_retries=retry))

    def call(self, method: str, path: str, missing_ok: bool = False, **kwargs) -> dict | None:
        """The answer's JSON; None for a 404 (or any 4xx with missing_ok: MLflow answers
        RESOURCE_DOES_NOT_EXIST with 404, a permission never granted with 400 or 404)."""
        answer = self.session.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        if answer.status_code == 404 or (missing_ok and 400 <= answer.status_code < 500):
            return None
        if answer.status_code != 200:
            raise SystemExit(f"MLflow: {method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer.json() if answer.content else {}


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
    api = MLflow(url)
    actions = []
    # An account deleted or a password reset: the server's processes must forget the
    # logins they trusted (the role restarts MLflow; see mlflow_auth_cache_seconds).
    forget_logins = False
    people = spec.get("people", [])

    for username, password in sorted(spec["users"].items()):
        if api.call("GET", "/api/2.0/mlflow/users/get", params={"username": username}) is None:
            api.call(
                "POST",
                "/api/2.0/mlflow/users/create",
                json={"username": username, "password": password},
            )
            actions.append(f"created user {username}")
            continue
        if not password_works(url, username, password):
            api.call(
                "PATCH",
                "/api/2.0/mlflow/users/update-password",
                json={"username": username, "password": password},
            )
            actions.append(f"reset the password of {username}")
            forget_logins = True

    if spec.get("people_file"):
        people_file = Path(spec["people_file"])
        before = set(json.loads(people_file.read_text())) if people_file.exists() else set()
        for gone in sorted(before - {person["name"] for person in people}):
            if api.call("DELETE", "/api/2.0/mlflow/users/delete", json={"username": gone}) is None:
                continue  # already gone
            actions.append(f"deleted user {gone} (no longer in mlops_people)")
            forget_logins = True
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
        found = api.call(
            "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}
        )
        if found is None:
            created = api.call("POST", "/api/2.0/mlflow/experiments/create", json={"name": name})
            ids[name] = created["experiment_id"]
            actions.append(f"created experiment {name}")
        else:
            ids[name] = found["experiment"]["experiment_id"]
    for name in models:
        if api.call("GET", "/api/2.0/mlflow/registered-models/get", params={"name": name}) is None:
            api.call("POST", "/api/2.0/mlflow/registered-models/create", json={"name": name})
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
        resource = {"username": user, "resource_type": kind, "resource_id": resource_id}
        current = api.call(
            "GET", "/api/3.0/mlflow/users/permissions/get", missing_ok=True, params=resource
        )
        if (current or {}).get("permission") != permission:
            api.call(
                "POST",
                "/api/3.0/mlflow/users/permissions/grant",
                json={**resource, "permission": permission},
            )
            actions.append(f"granted {permission} on {kind} {name} to {user}")

    print(
        json.dumps({"changed": bool(actions), "actions": actions, "forget_logins": forget_logins})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
