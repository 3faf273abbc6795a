"""Start the web app under real waitress for tests (used by conftest.py and the tests),
and run code in this process with a host's environment (a worker's, to drive the flows)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import psycopg
import requests
from werkzeug.security import generate_password_hash

BIN = Path(sys.executable).parent


@contextmanager
def environment(values: dict):
    """This process's environment with `values` added, put back as it was afterwards."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


@dataclass
class WebApp:
    url: str
    env: dict
    reviewer: tuple[str, str]
    process: subprocess.Popen
    log: Path

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kwargs)

    def predict(self, data: bytes) -> dict:
        answer = self.post("/api/v1/predict", files={"file": ("d.png", data)})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def stop(self, how: int = signal.SIGTERM) -> None:
        """The app and the waitress processes it forked."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, how)
            self.process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def web_env(services, tmp_path: Path, **overrides) -> tuple[dict, tuple[str, str]]:
    reviewer = ("reviewer", secrets.token_urlsafe(18))
    secrets_file = (
        Path(os.environ.get("MLOPS_CACHE_DIR", ".cache")) / "credentials" / "test-services"
    )
    secrets_file.mkdir(parents=True, exist_ok=True)
    (secrets_file / f"web-{tmp_path.name}.secrets").write_text(reviewer[1] + "\n")
    env = {
        **services.client_env("web"),
        "MLOPS_SECRET_KEY": secrets.token_urlsafe(32),
        "MLOPS_REVIEWERS": f"{reviewer[0]}:{generate_password_hash(reviewer[1])}",
        "MLOPS_MODEL_POLL_SECONDS": "2",
        # The status page's figures as they are now, not as a minute ago.
        "MLOPS_STATUS_REFRESH_SECONDS": "0",
        "MLOPS_MODEL_DIR": str(tmp_path / "models"),
        **overrides,
    }
    return env, reviewer


def start_web(
    services, tmp_path: Path, threads: int = 4, port: int | None = None, **overrides
) -> WebApp:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env, reviewer = web_env(services, tmp_path, **overrides)
    port = port or free_port()
    log = tmp_path / "waitress.log"
    process = subprocess.Popen(
        [
            str(BIN / "mlops-serving"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(threads),
        ],
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)  # the app and any waitress processes it forked
        process.wait()
        raise
    return WebApp(url, env, reviewer, process, log)


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the web app exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or the processes still starting
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the web app did not start:\n{log.read_text()[-3000:]}")


# /readyz answers in a row, each on a new connection, that stand for "every process": the
# kernel hands each connection to any of the waitress processes sharing the socket.
READY_STREAK = 20


def wait_ready(web: WebApp, timeout: float = 60, **expected) -> dict:
    """Until every waitress process is ready and says `expected` (model_version="3",
    shadow_version=None, ...): each process loads its models on its own, seconds apart
    on a busy machine. Returns the last answer.

    A process busy loading seldom accepts, so a streak alone can miss it; the
    `mlops_model_version` gauge (summed over the processes) counts those serving."""
    deadline = time.monotonic() + timeout
    processes = int(web.env.get("MLOPS_WEB_PROCESSES", "1"))
    streak, body, serving = 0, {}, 0
    while streak < READY_STREAK or serving < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"/readyz is not {expected or 'ready'} everywhere: {body}"
                f" ({serving} of {processes} processes serve its model)"
            )
        answer = web.get("/readyz")
        body = answer.json()
        if answer.status_code == 200 and all(body.get(k) == v for k, v in expected.items()):
            streak += 1
            if streak >= READY_STREAK:
                serving = processes_serving(web, body["model_version"])
                if serving < processes:
                    streak = 0
                    time.sleep(0.5)
        else:
            streak = 0
            time.sleep(0.5)
    return body


def processes_serving(web: WebApp, version: str) -> int:
    return int(
        sum(
            value
            for labels, value in samples(web, "mlops_model_version").items()
            if dict(labels)["version"] == version
        )
    )


def samples(web: WebApp, name: str) -> dict[tuple, float]:
    """A metric's samples from /metrics (summed over the waitress processes), by their labels."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(web.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def bucket(services):
    """The uploads bucket with the admin keys: the web app's own identity may only put."""
    admin = services.s3_admin()
    return boto3.client(
        "s3",
        endpoint_url=admin["endpoint"],
        aws_access_key_id=admin["access_key"],
        aws_secret_access_key=admin["secret_key"],
        region_name=admin["region"],
    )


def outbox_empty(env: dict, timeout: float = 60) -> None:
    """Wait until the shipper has copied every queued original to the bucket."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(env["MLOPS_DATABASE_URL"]) as conn:
        while conn.execute("SELECT count(*) FROM upload_originals").fetchone()[0]:
            assert time.monotonic() < deadline, "the outbox did not drain"
            time.sleep(0.2)
