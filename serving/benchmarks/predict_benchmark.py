"""Benchmark (not a test): /api/v1/predict against `mlflow models serve`, same model, same images.

Starts the real services (tools/test_services.py), publishes data-v1/v2 and
trains a model version (unless one holds the alias), then serves that version
twice on this machine: the web app under waitress, and MLflow's own scoring
server (`mlflow models serve`, the PyTorch flavour). Each gets the same 200
test images from 1, 8 and 32 concurrent clients (keep-alive connections, a
warm-up first), one after the other, and the script prints requests per
second and p50/p99 latency for both, and their ratio.

Our endpoint does more per request than MLflow's: it decodes and
preprocesses an image file, and commits the upload (a PostgreSQL row and the
original in the outbox, which the shipper copies to the object store after
the burst). MLflow's gets the ready 28x28 tensor as JSON and stores nothing.
Before each case the outbox is empty: the script waits for the shipper and
prints how long the last burst's originals took to reach the bucket. A last
case runs 8 clients for --sustained seconds, longer than the outbox's
longest wait (30 s), where the shipper runs beside the requests.

The shadow case (--shadow-seconds, 20 by default) measures what shadow mode adds: 8
clients without a candidate, with one (a copy of the same version holding
`candidate`: the web app runs it beside production on every request), and
without again, each with an empty outbox; it prints p50/p99 of each and how
many predictions the candidate shadowed (from /metrics).

    .venv-dev/bin/python serving/benchmarks/predict_benchmark.py \
        [--seconds 10] [--processes N] [--threads 4] [--mlflow-workers 1] [--sustained 60]
        [--shadow-seconds 20] [--clients 1,8,32]

Target on 2 cores: at 8 clients, at least 2x the requests per second of
`mlflow models serve`, and p99 <= 25 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from loadgen import Target, columns, load, multipart, wait_ok  # beside this script
from mlops_serving import outbox
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "serving" / "tests"))
BIN = Path(sys.executable).parent


def local(port: int) -> Target:
    return Target(f"http://127.0.0.1:{port}")


def mlflow_json(png: bytes) -> bytes:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32) / 255.0
    return json.dumps({"inputs": pixels[None, None].tolist()}).encode()


def drain_outbox(database_url: str, timeout: float = 600) -> tuple[int, float]:
    """Wait until the shipper has put every queued original in the bucket: (backlog, seconds)."""
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        backlog = waiting = outbox.waiting(conn)[0]
        while waiting:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"the outbox did not drain in {timeout:.0f} s")
            time.sleep(0.2)
            waiting = outbox.waiting(conn)[0]
    return backlog, time.perf_counter() - started


def shadow_case(web, services, version: str, requests, seconds: float, poll_seconds: int) -> None:
    """8 clients without a candidate, with one shadowing production, and without again."""
    from mlflow import MlflowClient
    from mlops_flows import tracking
    from webapp import environment, samples

    counters = ("mlops_predictions_total", "mlops_shadow_predictions_total")

    port = int(web.url.rsplit(":", 1)[1])
    with environment(services.client_env("worker")):
        client = MlflowClient()
        candidate = client.copy_model_version(f"models:/mnist/{version}", "mnist").version
    print(
        f"shadow mode, 8 clients, {seconds:.0f} s per case; the candidate: version {candidate}"
        f" (a copy of {version}: the same model, so the same cost)"
    )
    print(f"{'case':>16} | {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | shadowed")
    cases = {}
    for case in ("without shadow", "with shadow", "without again"):
        with environment(services.client_env("worker")):
            if case == "with shadow":
                tracking.start_shadow(client, "mnist", candidate)
            elif case == "without again":
                client.delete_registered_model_alias("mnist", tracking.CANDIDATE)
        if case != "without shadow":
            time.sleep(poll_seconds + 5)  # every waitress process polls on its own
        drain_outbox(web.env["MLOPS_DATABASE_URL"])  # each case starts with the shipper idle
        before = [sum(samples(web, name).values()) for name in counters]
        result = cases[case] = load(local(port), "/api/v1/predict", requests, 8, seconds)
        predicted, shadowed = (
            sum(samples(web, name).values()) - was
            for name, was in zip(counters, before, strict=True)
        )
        print(f"{case:>16} | {columns(result, 7)} | {shadowed:.0f} of {predicted:.0f}")
    without = [cases["without shadow"], cases["without again"]]
    with_shadow = cases["with shadow"]
    for quantile in ("p50_ms", "p99_ms"):
        base = sum(result[quantile] for result in without) / 2
        print(
            f"added by shadow mode, {quantile[:3]}: {with_shadow[quantile] - base:+.1f} ms"
            f" ({with_shadow[quantile] / base:.2f}x the mean of the two cases without)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per case")
    parser.add_argument("--threads", type=int, default=4, help="waitress threads per process")
    parser.add_argument(
        "--processes",
        type=int,
        default=(os.cpu_count() or 1) + 1,
        help="waitress processes (default: cores + 1, as the serving role's default on 2 cores)",
    )
    parser.add_argument(
        "--mlflow-workers", type=int, default=1, help="uvicorn workers (mlflow's default: 1)"
    )
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument(
        "--sustained", type=float, default=60.0, help="seconds of the sustained case (0: none)"
    )
    parser.add_argument(
        "--shadow-seconds", type=float, default=20.0, help="seconds per shadow case (0: none)"
    )
    args = parser.parse_args()

    from test_services import Services
    from webapp import free_port, start_web, wait_ready

    state = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    services = Services(state)
    processes: list[subprocess.Popen] = []
    try:
        services.start()
        worker = {**os.environ, **services.client_env("worker")}
        subprocess.run(
            [str(BIN / "mlops-flows"), "data", "bootstrap"],
            env=worker,
            check=True,
            capture_output=True,
        )
        trained = subprocess.run(
            [str(BIN / "mlops-flows"), "train", "--epochs", "3"],
            env=worker,
            check=True,
            capture_output=True,
            text=True,
        )
        version = json.loads(trained.stdout[trained.stdout.index("{") :])["version"]
        fetched = json.loads(
            subprocess.run(
                [str(BIN / "mlops-flows"), "data", "fetch", "data-v2", str(state / "data")],
                env=worker,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        pngs = [
            p.read_bytes() for p in sorted(Path(fetched["path"], "test").glob("[0-9]/*.png"))[::5]
        ][:200]

        web = start_web(
            services,
            state,
            threads=args.threads,
            MLOPS_MODEL_POLL_SECONDS="30",
            MLOPS_WEB_PROCESSES=str(args.processes),
        )
        processes.append(web.process)
        wait_ready(web)
        web_port = int(web.url.rsplit(":", 1)[1])
        mlflow_port = free_port()
        serve_log = (state / "mlflow-serve.log").open("w")
        serve = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/mnist/{version}",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                str(args.mlflow_workers),
            ],
            env={**os.environ, **services.client_env("web"), "PATH": f"{BIN}:{os.environ['PATH']}"},
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(serve)
        wait_ok(local(mlflow_port), "/ping", 180)

        ours = [multipart(png) for png in pngs]
        theirs = [(mlflow_json(png), "application/json") for png in pngs]
        database_url = web.env["MLOPS_DATABASE_URL"]
        print(
            f"model mnist version {version}; {len(pngs)} test images;"
            f" {args.seconds:.0f} s per case; waitress {args.processes} processes x"
            f" {args.threads} threads; mlflow serve {args.mlflow_workers} worker(s);"
            f" {os.cpu_count()} cores"
        )
        print(
            f"{'clients':>7} | {'ours rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | "
            f"{'mlflow rps':>10} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | {'rps ratio':>9}"
            f" | outbox after, drained in"
        )
        results = {}
        for clients in [int(c) for c in args.clients.split(",")]:
            a = load(local(web_port), "/api/v1/predict", ours, clients, args.seconds)
            backlog, drain = drain_outbox(database_url)
            b = load(local(mlflow_port), "/invocations", theirs, clients, args.seconds)
            results[clients] = (a, b)
            print(
                f"{clients:>7} | {columns(a, 9)} | {columns(b, 10)} | {a['rps'] / b['rps']:>9.2f}"
                f" | {backlog} originals, {drain:.1f} s"
            )
        if 8 in results:
            a, b = results[8]
            met = a["rps"] >= 2 * b["rps"] and a["p99_ms"] <= 25
            print(f"target at 8 clients (>= 2x rps, p99 <= 25 ms): {'met' if met else 'NOT met'}")
        if args.sustained > 0:
            a = load(local(web_port), "/api/v1/predict", ours, 8, args.sustained)
            with psycopg.connect(database_url) as conn:
                waiting, _, oldest = outbox.waiting(conn)
            backlog, drain = drain_outbox(database_url)
            print(
                f"sustained, 8 clients, {args.sustained:.0f} s (ours only): {columns(a, 9)};"
                f" at its end {waiting} originals waited, the oldest {oldest or 0:.1f} s;"
                f" drained in {drain:.1f} s"
            )
        if args.shadow_seconds > 0:
            shadow_case(web, services, version, ours, args.shadow_seconds, poll_seconds=30)
        return 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        services.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
