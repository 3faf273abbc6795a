#!/usr/bin/env python3
"""Deployment timing (a benchmark, not a test) on the demo hosts.

Removes the demo, starts fresh demo hosts, converges them one part of site.yml
at a time (server, workers, web, edge, operations, people: each playbook's wall
time), starts the first train run as `make up` does, then runs the whole
site.yml again and reports its time and the changes it made (a no-op re-run
must change nothing). Prints a table.

    .venv/bin/python tools/deploy_timing.py            (about as long as `make up`)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
CACHE = Path(os.environ.get("MLOPS_CACHE_DIR", ROOT / ".cache"))


def run(argv: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(
        argv,
        cwd=ROOT,
        env={
            # As make up runs them (playbooks/demo/run).
            "ANSIBLE_STRATEGY": "mitogen_linear",
            # make up's cache (the SeaweedFS build, the wheels): without it the
            # roles fall back to ~/.cache/mlops, another cache than make up's.
            "MLOPS_CACHE_DIR": str(CACHE),
            **os.environ,
            "ANSIBLE_FORCE_COLOR": "false",
            "PATH": f"{BIN}:{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.stdout.write(result.stdout[-4000:] + result.stderr[-2000:])
        raise SystemExit(f"failed: {' '.join(argv)}")
    return seconds, result.stdout


def changes(output: str) -> dict[str, int]:
    return {
        host: int(n) for host, n in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.M)
    }


def main() -> int:
    vars_file = CACHE / "demo-vars.json"
    run([str(ROOT / "playbooks" / "demo" / "run"), "vars"])
    run([str(BIN / "ansible-playbook"), "playbooks/demo/hosts.yml", "-e", "demo_state=down"])
    hosts_seconds, _ = run(
        [str(BIN / "ansible-playbook"), "playbooks/demo/hosts.yml", "-e", "demo_state=up"]
    )
    rows = [("start the demo hosts (containers)", hosts_seconds, "")]
    # site.yml's parts in its order (playbooks/after_server.yml after the server).
    for group, playbook in (
        ("mlops_server", "server"),
        ("workers", "workers"),
        ("web", "web"),
        ("edge", "edge"),
        ("backup, monitoring", "operations"),
        ("people's settings", "people"),
    ):
        seconds, output = run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                "inventories/demo",
                f"playbooks/{playbook}.yml",
                "-e",
                f"@{vars_file}",
            ]
        )
        rows.append((f"fresh converge: {group} (playbooks/{playbook}.yml)", seconds, ""))
    seconds, _ = run(
        [str(BIN / "python"), "playbooks/demo/first_train.py", "inventories/demo.credentials"]
    )
    rows.append(("first train run (as make up starts it)", seconds, ""))
    rows.append(("fresh make up, in all (the rows above)", sum(row[1] for row in rows), ""))
    seconds, output = run(
        [str(BIN / "ansible-playbook"), "-i", "inventories/demo", "site.yml", "-e", f"@{vars_file}"]
    )
    changed = changes(output)
    rows.append(("no-op re-run: site.yml, every host", seconds, f"changed per host: {changed}"))
    width = max(len(label) for label, _, _ in rows)
    print(f"{'step':<{width}}  seconds  notes")
    for label, seconds, note in rows:
        print(f"{label:<{width}}  {seconds:7.1f}  {note}")
    return 0 if changed and not any(changed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
