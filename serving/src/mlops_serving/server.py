"""`mlops-serving`: the web app under waitress (the production WSGI server).

One waitress process runs Python on one core at a time (the GIL), so with
--processes N the command opens the listening socket once and forks N
waitress processes that accept on it; the kernel hands each connection to one
of them. Each process has its own model, database pool and uploads' shipper
(the outbox is safe to share). Prometheus metrics are summed over the
processes through prometheus_client's multiprocess mode. When one process
dies, the others are stopped and the command exits non-zero, so systemd
restarts the whole service.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

log = logging.getLogger("mlops_serving.server")
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def serve_app(threads: int, **where) -> None:
    from waitress import serve

    from .app import create_app

    serve(create_app(), threads=threads, ident="mlops-serving", **where)


def serve_processes(args: argparse.Namespace) -> int:
    # Before any process imports prometheus_client: it picks its storage at import.
    metrics_dir = tempfile.mkdtemp(prefix="mlops-serving-metrics-")
    os.environ[METRICS_DIR] = metrics_dir
    listener = socket.create_server((args.host, args.port), backlog=2048)
    children: set[int] = set()
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve_app(args.threads, sockets=[listener])
            except BaseException:
                log.exception("waitress process %s failed", os.getpid())
                code = 1
            os._exit(code)
        children.add(pid)
    listener.close()
    log.info("%d waitress processes on %s:%d: %s", len(children), args.host, args.port, children)

    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        for child in children:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from prometheus_client import multiprocess

    code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        multiprocess.mark_process_dead(pid, metrics_dir)
        if not stopping:
            log.error("waitress process %d ended (status %d): stopping the others", pid, status)
            code = 1
            stop(signal.SIGTERM, None)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mlops-serving", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("MLOPS_WEB_HOST", "0.0.0.0"))  # noqa: S104 (a server)
    parser.add_argument("--port", type=int, default=int(os.environ.get("MLOPS_WEB_PORT", "8000")))
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("MLOPS_WEB_THREADS", "8"))
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=int(os.environ.get("MLOPS_WEB_PROCESSES", "1")),
        help="waitress processes sharing the port (about one per core)",
    )
    args = parser.parse_args(argv)
    if args.processes < 1 or args.threads < 1:
        parser.error("--processes and --threads must be at least 1")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    if args.processes == 1:
        serve_app(args.threads, host=args.host, port=args.port)
    else:
        sys.exit(serve_processes(args))


if __name__ == "__main__":
    main()
