"""Benchmark (not a test): the web tier through the edge, and a web host lost under load.

Against a deployed platform with an edge (molecule/cluster, or your own):

1. throughput: POST /api/v1/predict from 8 and 32 clients (keep-alive
   connections, a warm-up first) through the edge (HTTPS with the platform's
   CA, every web host behind it), next to one web host direct (plain HTTP):
   requests per second, p50, p99 and failed requests;
2. failover (with --stop and --start): 8 clients through the edge for
   --phase seconds each: before; while `--stop` stops one web host's app 2 s
   into the phase (its requests in flight included); while `--start` starts
   it again 2 s into the phase: failed requests and p99 per phase.

    .venv-dev/bin/python serving/benchmarks/edge_benchmark.py \
        --edge https://EDGE --ca CA.crt [--direct https://WEB1:8000] \
        [--stop 'docker exec cl-web-2 systemctl stop mlops-web.service'] \
        [--start 'docker exec cl-web-2 systemctl start mlops-web.service'] \
        [--seconds 10] [--phase 15] [--clients 8,32]

Each request is an upload the platform keeps (unconfirmed). The edge's
per-address rate limit on predict applies: raise edge_rate_limits.predict
for this one client address, or the figures are the limit's. The last line
is the figures as JSON; the exit status is 1 when a failover phase had a
failed request.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import subprocess
import sys
import threading

from loadgen import Target, load, multipart  # beside this script
from PIL import Image, ImageDraw

PREDICT = "/api/v1/predict"


def digit_pngs(count: int = 40) -> list[bytes]:
    """Distinct hand-drawn-looking strokes as PNG files."""
    pngs = []
    for k in range(count):
        image = Image.new("L", (140, 140), 235)
        draw = ImageDraw.Draw(image)
        draw.line([(30 + k % 7, 25), (110, 30 + k % 11), (55 + k % 5, 120)], fill=15, width=12)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def failover(target: Target, bodies, phase: float, stop: str, start: str) -> dict:
    """8 clients through the edge; 2 s into the second phase one web host's app is
    stopped (requests in flight on it included), 2 s into the third it starts again."""
    phases = {}
    for name, command in (("before", None), ("one host stopping", stop), ("it starts", start)):
        runner = None
        if command:
            runner = threading.Timer(
                2.0,
                subprocess.run,
                args=(shlex.split(command),),
                kwargs={"check": True, "capture_output": True, "timeout": 120},
            )
            runner.start()
        phases[name] = load(target, PREDICT, bodies, 8, phase, warm_up=0.0)
        if runner:
            runner.join()
    return phases


def row(name: str, result: dict) -> str:
    return (
        f"{name:<34} {result['rps']:>8.1f} {result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f}"
        f" {result['failed']:>7} {json.dumps(result['failures']) if result['failed'] else ''}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge", required=True, help="the edge's web URL (https://...)")
    parser.add_argument("--ca", help="the CA file the edge's certificate is checked against")
    parser.add_argument("--direct", help="one web host's own URL (its TLS front, same CA)")
    parser.add_argument("--stop", help="command that stops one web host's app")
    parser.add_argument("--start", help="command that starts it again")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--phase", type=float, default=15.0)
    parser.add_argument("--clients", default="8,32")
    args = parser.parse_args()

    bodies = [multipart(png) for png in digit_pngs()]
    edge = Target(args.edge, args.ca)
    figures: dict = {"throughput": {}, "failover": {}}
    print(f"{'case':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    for clients in (int(n) for n in args.clients.split(",") if n):
        cases = [(f"edge, all web hosts, {clients} clients", edge)]
        if args.direct:
            cases.append((f"one web host direct, {clients} clients", Target(args.direct, args.ca)))
        for name, target in cases:
            result = load(target, PREDICT, bodies, clients, args.seconds)
            figures["throughput"][name] = result
            print(row(name, result), flush=True)
    failed = 0
    if args.stop and args.start:
        for name, result in failover(edge, bodies, args.phase, args.stop, args.start).items():
            figures["failover"][name] = result
            failed += result["failed"]
            print(row(f"failover: {name}, 8 clients", result), flush=True)
    print(json.dumps(figures))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
