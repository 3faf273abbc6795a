#!/usr/bin/env python3
"""MLflow's basic auth: requests per second with and without its credential cache.

Every authenticated request makes MLflow check the password against its scrypt
hash (tens to hundreds of milliseconds of CPU) unless `auth_cache_ttl_seconds`
caches a successful check. Starts two local MLflow servers (SQLite, the mlflow
role's basic-auth app), one without the cache and one with it, side by side in
this run, and times the same authenticated GETs against each, with 1 and 4
clients. A benchmark, not a test:

    .venv-dev/bin/python tools/mlflow_auth_benchmark.py [REQUESTS_PER_CLIENT]
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from test_services import free_port, mlflow_auth_ini, wait_for  # beside this script

BIN = Path(sys.executable).parent


def start(home: Path, cache_seconds: int, admin_password: str) -> tuple[subprocess.Popen, str]:
    home.mkdir()
    ini = mlflow_auth_ini(home, cache_seconds)
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "2"),
            *("--app-name", "basic-auth"),
            *("--backend-store-uri", f"sqlite:///{home}/mlflow.db"),
            *("--artifacts-destination", str(home / "artifacts")),
        ],
        env={
            **os.environ,
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", 180, what="MLflow")
    except TimeoutError:
        server.kill()
        raise
    return server, url


def rate(url: str, auth: tuple[str, str], clients: int, requests_each: int) -> tuple[float, float]:
    """(requests per second, mean ms) of authenticated GETs of a registered model."""

    def client(_: int) -> list[float]:
        session = requests.Session()
        session.auth = auth
        seconds = []
        for _ in range(requests_each):
            started = time.monotonic()
            answer = session.get(
                f"{url}/api/2.0/mlflow/registered-models/get", params={"name": "mnist"}, timeout=60
            )
            answer.raise_for_status()
            seconds.append(time.monotonic() - started)
        return seconds

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        seconds = [s for each in pool.map(client, range(clients)) for s in each]
    return len(seconds) / (time.monotonic() - started), 1000 * sum(seconds) / len(seconds)


def main() -> int:
    requests_each = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    password = secrets.token_urlsafe(24)
    admin = ("admin", password)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlflow-auth-") as tmp:
        servers = {cache: start(Path(tmp) / f"cache-{cache}", cache, password) for cache in (0, 60)}
        try:
            for _, url in servers.values():
                requests.post(
                    f"{url}/api/2.0/mlflow/registered-models/create",
                    json={"name": "mnist"},
                    auth=admin,
                    timeout=60,
                ).raise_for_status()
            for clients in (1, 4):
                for cache, (_, url) in servers.items():
                    per_second, mean_ms = rate(url, admin, clients, requests_each)
                    rows.append((cache, clients, per_second, mean_ms))
        finally:
            for server, _ in servers.values():
                os.killpg(server.pid, 15)
    print(f"cpus: {os.cpu_count()}; {requests_each} authenticated GETs per client")
    print(f"{'auth_cache_ttl_seconds':>22} {'clients':>7} {'req/s':>8} {'mean ms':>8}")
    for cache, clients, per_second, mean_ms in rows:
        print(f"{cache:>22} {clients:>7} {per_second:8.1f} {mean_ms:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
