"""Benchmark (not a test): normal clients beside attackers, against a 2-process web app.

Starts the real services (tools/test_services.py) and a trained model (as
predict_benchmark.py does), then runs the web app under waitress with 2
processes and, for --seconds each, two cases one after the other:

    quiet     4 normal clients (the platform's own test images, keep-alive)
    attacked  the same 4, beside 8 attackers: pixel bombs (small PNGs of
              5000x5000 pixels), 1 GB bodies (chunked and claimed), and
              slowloris connections (a header byte every few seconds)

For each case it prints the normal clients' requests, failures, p50 and p99
latency, what the attackers got, the web processes' peak resident memory,
and the latency of /healthz sampled twice a second.

    .venv-dev/bin/python serving/benchmarks/hostile_benchmark.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from loadgen import Target, keep_posting, multipart, percentile  # beside this script
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "serving" / "tests"))
BIN = Path(sys.executable).parent


def pixel_bomb(side: int = 5000) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), 255).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class Case:
    """One case's clients, attackers and probes, all stopped by one event."""

    def __init__(self, port: int, images: list[bytes], seconds: float):
        self.port = port
        self.target = Target(f"http://127.0.0.1:{port}")
        self.images = [multipart(data) for data in images]
        self.seconds = seconds
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: Counter = Counter()
        self.attacks: Counter = Counter()
        self.health: list[float] = []
        self.lock = threading.Lock()

    def normal_client(self, offset: int) -> None:
        keep_posting(
            self.target,
            "/api/v1/predict",
            self.images,
            offset,
            4,
            lambda: not self.stop.is_set(),
            self.on_answer,
        )

    def on_answer(self, seconds: float, failure: str | None) -> None:
        with self.lock:
            if failure is None:
                self.latencies.append(seconds)
            else:
                self.failures[failure] += 1

    def bomb(self, payload: tuple[bytes, str]) -> None:
        while not self.stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request(
                    "POST", "/api/v1/predict", body=payload[0], headers={"Content-Type": payload[1]}
                )
                status = conn.getresponse().status
                conn.close()
            except (OSError, http.client.HTTPException) as error:
                status = type(error).__name__
            with self.lock:
                self.attacks[f"pixel bomb: {status}"] += 1

    def huge_body(self) -> None:
        block = b"\0" * (1024 * 1024)
        while not self.stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                sock.sendall(
                    b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                sent = 0
                while sent < 1024**3 and not self.stop.is_set():
                    sock.sendall(b"100000\r\n" + block + b"\r\n")
                    sent += len(block)
                # Only a body the server read to the end counts as sent.
                outcome = "sent 1 GB" if sent >= 1024**3 else "still sending when the case ended"
            except OSError:
                outcome = "cut off by the server"
            finally:
                sock.close()
            with self.lock:
                self.attacks[f"1 GB body: {outcome}"] += 1

    def slowloris(self, connections: int = 40) -> None:
        socks = []
        for _ in range(connections):
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\n")
                socks.append(sock)
            except OSError:
                with self.lock:
                    self.attacks["slowloris: refused"] += 1
        while not self.stop.is_set():
            for sock in list(socks):
                try:
                    sock.sendall(b"X-a: b\r\n")
                except OSError:
                    socks.remove(sock)
                    with self.lock:
                        self.attacks["slowloris: dropped by the server"] += 1
            self.stop.wait(5)
        for sock in socks:
            sock.close()
        with self.lock:
            self.attacks["slowloris: connections held"] += len(socks)

    def probe_health(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                conn.close()
                with self.lock:
                    self.health.append(time.perf_counter() - started)
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.failures["/healthz failed"] += 1
            self.stop.wait(0.5)

    def run(self, attacked: bool, pids: list[int]) -> dict:
        threads = [threading.Thread(target=self.normal_client, args=(k,)) for k in range(4)]
        threads.append(threading.Thread(target=self.probe_health))
        if attacked:
            bomb = multipart(pixel_bomb())
            threads += [threading.Thread(target=self.bomb, args=(bomb,)) for _ in range(3)]
            threads += [threading.Thread(target=self.huge_body) for _ in range(2)]
            threads += [threading.Thread(target=self.slowloris) for _ in range(3)]
        for thread in threads:
            thread.start()
        peak = 0
        ends = time.monotonic() + self.seconds
        while time.monotonic() < ends:
            peak = max(peak, resident(pids))
            time.sleep(0.5)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=60)
        return {
            "requests": len(self.latencies),
            "failures": sum(self.failures.values()),
            "failure_kinds": dict(self.failures),
            "rps": len(self.latencies) / self.seconds,
            "p50_ms": percentile(self.latencies, 50) * 1000,
            "p99_ms": percentile(self.latencies, 99) * 1000,
            "healthz_p50_ms": percentile(self.health, 50) * 1000,
            "healthz_max_ms": max(self.health, default=float("nan")) * 1000,
            "peak_rss_mb": peak / 2**20,
            "attacks": dict(self.attacks),
        }


def resident(pids: list[int]) -> int:
    """Resident bytes of the web app's processes (the parent and its waitress children)."""
    total = 0
    for pid in pids:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        family = [pid, *(int(c) for c in children.read_text().split())] if children.exists() else []
        for member in family:
            try:
                for line in Path(f"/proc/{member}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except FileNotFoundError:
                continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()

    from mlops_flows.config import Settings
    from mlops_flows.datarepo import DataRepo
    from test_services import Services
    from webapp import start_web, wait_ready

    state = Path(tempfile.mkdtemp(prefix="mlops-hostile-"))
    services = Services(state)
    services.start()
    web = None
    try:
        env = {**os.environ, **services.client_env("worker")}
        subprocess.run(
            [str(BIN / "mlops-flows"), "data", "bootstrap"],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [str(BIN / "mlops-flows"), "train", "--epochs", "2"],
            env=env,
            check=True,
            capture_output=True,
        )
        os.environ.update(services.client_env("worker"))
        version = DataRepo(Settings.from_env()).fetch("data-v2", state / "data")
        images = [path.read_bytes() for path in sorted((version.path / "test").glob("*/*.png"))]
        web = start_web(services, state / "web", MLOPS_WEB_PROCESSES="2")
        wait_ready(web)
        port = int(web.url.rsplit(":", 1)[1])
        print(
            f"web app: 2 waitress processes x 4 threads; {len(images)} test images;"
            f" {args.seconds:.0f} s per case; this machine: {os.cpu_count()} cores"
        )
        print(
            "case     | normal rps | failures | p50 ms | p99 ms | healthz p50/max ms | peak RSS MB"
        )
        results = {}
        for name, attacked in (("quiet", False), ("attacked", True)):
            result = Case(port, images, args.seconds).run(attacked, [web.process.pid])
            results[name] = result
            print(
                f"{name:<8} | {result['rps']:>10.1f} | {result['failures']:>8} |"
                f" {result['p50_ms']:>6.1f} | {result['p99_ms']:>6.1f} |"
                f" {result['healthz_p50_ms']:>8.1f} / {result['healthz_max_ms']:<7.1f} |"
                f" {result['peak_rss_mb']:>11.0f}"
            )
        for name, result in results.items():
            if result["failure_kinds"]:
                print(f"{name}: normal clients' failures: {result['failure_kinds']}")
        print(f"attacked: what the attackers got: {results['attacked']['attacks']}")
        return 0
    finally:
        if web is not None:
            web.stop()
        services.stop()


if __name__ == "__main__":
    sys.exit(main())
