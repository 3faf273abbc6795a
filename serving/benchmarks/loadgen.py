"""The benchmarks' one load generator: clients that POST uploads on keep-alive connections.

predict_benchmark.py, edge_benchmark.py and hostile_benchmark.py import it (it
sits beside them). A client cycles through its share of the bodies on one
connection and opens a new one when a request fails on it; each answer's time
or failure goes to a callback. `load` runs N such clients for a warm-up and
then a measured phase, and returns requests per second, p50, p99 and failures.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from statistics import quantiles
from urllib.parse import urlsplit


def multipart(data: bytes) -> tuple[bytes, str]:
    """An upload form (field `file`) and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return quantiles(values, n=100)[q - 1]


class Target:
    """Where the clients connect: scheme, host, port, and the TLS context for HTTPS."""

    def __init__(self, url: str, ca: str | None = None):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.context = ssl.create_default_context(cafile=ca) if self.https else None

    def connect(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=30, context=self.context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=30)


def wait_ok(target: Target, path: str, timeout: float) -> bytes:
    """GET path until it answers 200 (a server starting); its body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = target.connect()
            conn.request("GET", path)
            answer = conn.getresponse()
            body = answer.read()
            if answer.status == 200:
                return body
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"nothing answered 200 at {target.host}:{target.port}{path}")


def columns(result: dict, width: int) -> str:
    """A `load` result as table columns: requests/s (`width` wide), p50, p99, failures."""
    return (
        f"{result['rps']:>{width}.1f} {result['p50_ms']:>7.1f} {result['p99_ms']:>7.1f}"
        f" {result['failed']:>4}"
    )


def keep_posting(
    target: Target,
    path: str,
    bodies: list[tuple[bytes, str]],
    offset: int,
    step: int,
    running: Callable[[], bool],
    on_answer: Callable[[float, str | None], None],
) -> None:
    """One client: POST bodies[offset], bodies[offset + step], ... (cycling) while running();
    on_answer(seconds, None) after a 200, on_answer(seconds, "HTTP 503" or the error's name)
    after anything else."""
    conn, i = target.connect(), offset
    while running():
        body, content_type = bodies[i % len(bodies)]
        i += step
        started = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
            answer = conn.getresponse()
            answer.read()
            failure = None if answer.status == 200 else f"HTTP {answer.status}"
        except (OSError, http.client.HTTPException) as error:
            failure = type(error).__name__
            conn.close()
            conn = target.connect()
        on_answer(time.perf_counter() - started, failure)
    conn.close()


def load(
    target: Target,
    path: str,
    bodies: list[tuple[bytes, str]],
    clients: int,
    seconds: float,
    warm_up: float = 2.0,
    on_measuring: Callable[[], None] | None = None,
) -> dict:
    """`clients` clients for `warm_up` seconds (not counted), then for `seconds`;
    on_measuring() is called as the measured phase starts (e.g. to read CPU counters)."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = [0.0]

    def on_answer(seconds: float, failure: str | None) -> None:
        with lock:
            if failure is None:
                latencies.append(seconds)
            else:
                failures[failure] = failures.get(failure, 0) + 1

    def running() -> bool:
        return time.perf_counter() < stop_at[0]

    elapsed = 0.0
    for phase, phase_seconds in enumerate((warm_up, seconds)):
        if phase and on_measuring is not None:
            on_measuring()
        latencies.clear()
        failures.clear()
        stop_at[0] = time.perf_counter() + phase_seconds
        threads = [
            threading.Thread(
                target=keep_posting,
                args=(target, path, bodies, k, clients, running, on_answer),
            )
            for k in range(clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    return {
        "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "ok": len(latencies),
        "failed": sum(failures.values()),
        "failures": dict(failures),
    }
