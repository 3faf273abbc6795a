"""Benchmark (not a test): what a web host's TLS front costs, side by side.

On a web host (the front lets in 127.0.0.1): the same predictions to the app on
loopback in plain HTTP, and through the front (TLS, then each connection passed
to the same app), from the same client on the same host, one after the other,
alternating for several rounds so that neither gets the quieter moments.
Prints requests per second, p50 and p99 per case and round, the medians, and
the ratio front / direct.

    /opt/mlops-web/venv/bin/python front_benchmark.py \
        [--direct http://127.0.0.1:18000] [--front https://127.0.0.1:8000] \
        [--ca /etc/ssl/mlops/ca.crt] [--clients 8,32] [--seconds 5] [--rounds 3]

(Copy it with loadgen.py and edge_benchmark.py beside it; the web app's venv
has what they import.)
"""

from __future__ import annotations

import argparse
import json
import sys
from statistics import median

from edge_benchmark import PREDICT, digit_pngs, row  # beside this script
from loadgen import Target, load, multipart


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--direct", default="http://127.0.0.1:18000", help="the app on loopback")
    parser.add_argument("--front", default="https://127.0.0.1:8000", help="the host's TLS front")
    parser.add_argument("--ca", default="/etc/ssl/mlops/ca.crt", help="the platform's CA")
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    bodies = [multipart(png) for png in digit_pngs()]
    targets = {"direct": Target(args.direct), "front": Target(args.front, args.ca)}
    print(f"{'case':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    summary: dict = {}
    failed = 0
    for clients in (int(n) for n in args.clients.split(",") if n):
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for round_number in range(1, args.rounds + 1):
            for name, target in targets.items():
                result = load(target, PREDICT, bodies, clients, args.seconds)
                runs[name].append(result)
                failed += result["failed"]
                print(row(f"{name}, {clients} clients, round {round_number}", result), flush=True)
        medians = {
            name: {key: median(r[key] for r in results) for key in ("rps", "p50_ms", "p99_ms")}
            for name, results in runs.items()
        }
        for name, figures in medians.items():
            print(
                f"{name + f', {clients} clients, median':<34} {figures['rps']:>8.1f}"
                f" {figures['p50_ms']:>8.1f} {figures['p99_ms']:>8.1f}"
            )
        direct_rps = medians["direct"]["rps"]
        ratio = medians["front"]["rps"] / direct_rps if direct_rps else 0.0
        print(f"front / direct, {clients} clients: {ratio:.2f}x requests per second", flush=True)
        summary[clients] = {"medians": medians, "front_over_direct_rps": round(ratio, 3)}
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
