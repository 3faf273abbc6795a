"""`mlops-serving`: the web app under waitress (the production WSGI server).

One waitress process runs Python on one core at a time (the GIL), so with
--processes N the command opens the listening socket once and forks N
waitress processes that accept on it; the kernel hands each connection to one
of them. Each process has its own model, database pool and uploads' shipper
(the outbox is safe to share). Prometheus metrics are summed over the
processes through prometheus_client's multiprocess mode. When one process
dies, the others are stopped and the command exits non-zero, so systemd
restarts the whole service.

waitress is bounded from the app's own limits: it reads no request body
larger than an upload can be (413 at once, chunked bodies included), keeps at
most `web_connection_limit` connections per process, and drops a connection
idle for `web_channel_timeout` seconds. Costly image decodes share one slot
per host across the processes (service.DecodeGate).

A stop (SIGTERM) drains: each process stops accepting, answers the requests it
holds (up to `web_drain_seconds`), then exits; the edge sends new requests to
the other web hosts meanwhile. Every answer while draining closes its
connection; idle keep-alive connections stay open `web_keepalive_grace_seconds`
for the edge to close them itself (closing one under it raced its next POST:
a 502).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import logging
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

from .config import Config

log = logging.getLogger("mlops_serving.server")
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def waitress_settings(config: Config) -> dict:
    settings = {
        "max_request_body_size": config.max_request_body_bytes,
        "connection_limit": config.web_connection_limit,
        "channel_timeout": config.web_channel_timeout,
        "ident": "mlops-serving",
        # X-Forwarded-* from anyone but the edge are removed, never believed.
        "clear_untrusted_proxy_headers": True,
    }
    if config.trusted_proxy:
        settings |= {
            "trusted_proxy": config.trusted_proxy,
            "trusted_proxy_count": 1,
            "trusted_proxy_headers": {
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-forwarded-port",
            },
        }
    return settings


def json_errors() -> None:
    """Errors waitress answers itself are JSON, like the app's.

    waitress refuses some requests before the app sees them (a body over
    max_request_body_size, a malformed request line or header); its own
    answer is text/plain, and clients of the API read `{"error": ...}`.
    """
    import json

    from waitress.utilities import Error

    def to_response(self, ident=None):
        body = json.dumps({"error": f"{self.reason}: {self.body}"}).encode()
        return f"{self.code} {self.reason}", [("Content-Type", "application/json")], body

    Error.to_response = to_response


class AtMostEvery(logging.Filter):
    """Lets one record through per `seconds`; the next one says how many were held back.

    waitress warns "Task queue depth is N" each time a request waits for a free
    thread: under load that was every request (10,050 lines in one benchmark
    run), each formatted in waitress's I/O thread and stored by journald, CPU
    taken from the requests, and the journal flooded on a busy day. One line
    per interval still tells the operator the threads were all busy, and how
    often."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self._lock = threading.Lock()
        self._next_at = 0.0
        self._held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        with self._lock:
            if now < self._next_at:
                self._held_back += 1
                return False
            held_back, self._held_back = self._held_back, 0
            self._next_at = now + self.seconds
        if held_back:
            record.msg = f"{record.getMessage()} ({held_back} more since the last one logged)"
            record.args = ()
        return True


# waitress's "Task queue depth is N": at most one line per interval and process.
QUEUE_WARNING_SECONDS = 60.0


def notify_systemd(state: str) -> None:
    """Tell systemd (a Type=notify unit) `state`, e.g. READY=1 once the port listens: the
    units ordered after the app (its TLS front) start only then. Outside systemd, nothing.

    Started before the app listened, the front took connections it could only close (the
    app's port refused them): the edge had sent their requests and answered POSTs 502."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as error:  # a socket not meant for us: serve anyway
        log.warning("could not tell systemd %s at %s: %s", state, address, error)


def serve_app(config: Config, decode_slots, **where) -> None:
    from waitress.server import create_server

    from .app import create_app

    app = create_app(config, decode_slots=decode_slots)
    json_errors()
    logging.getLogger("waitress.queue").addFilter(AtMostEvery(QUEUE_WARNING_SECONDS))
    server = create_server(app, threads=config.web_threads, **waitress_settings(config), **where)
    drain_on_sigterm(server, config.web_drain_seconds, config.web_keepalive_grace_seconds)
    if "sockets" not in where:  # one process: its own listener is open now
        notify_systemd("READY=1")
    server.run()


# A handshake the kernel answered just before the stop completes within this on any
# network the edge and the web hosts share.
HANDSHAKE_GRACE = 0.25

# Classic BPF on a TCP socket sees the TCP header first; byte 13 holds the flags:
# drop a packet with SYN set, keep every other. (code, jt, jf, k) per instruction.
_DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x54, 0, 0, 0x02),  # and #SYN
    (0x15, 0, 1, 0),  # jeq #0: keep, else drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret keep
    (0x06, 0, 0, 0),  # ret drop
)


def refuse_new_handshakes(listener: socket.socket) -> None:
    """Drop new SYNs at a listening socket, so no connection enters its backlog after
    the drain took it: closing a listener resets what waits in it, and a client that
    had sent its POST there got a reset (CI saw one with 8 clients at a stop). A dropped
    SYN is sent again after a second, and then finds the port closed: refused, which
    the edge sends to another host. The forked processes share the socket: one filter
    stops it for all, as they all stop together."""
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in _DROP_SYN))
    fprog = struct.pack("HP", len(_DROP_SYN), ctypes.addressof(program))
    try:
        listener.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_ATTACH_FILTER", 26), fprog)
    except OSError as error:  # not Linux: the close resets what waits, as before
        log.warning("cannot refuse new handshakes before the stop: %s", error)


def drain_on_sigterm(server, seconds: float, keepalive_grace: float) -> None:
    """On SIGTERM (a stop or restart), stop accepting connections, let the requests in
    flight finish and their answers go out (up to `seconds`), then end waitress's loop.
    Idle keep-alive connections are kept `keepalive_grace` seconds (at most `seconds`),
    for their client to close them or send one more request, answered and closed.

    Without it a stopping host answered nothing to the requests it held: the edge
    turned them into 502s, as it never re-sends a POST that reached an app.
    """
    from waitress import wasyncore
    from waitress.channel import HTTPChannel
    from waitress.server import BaseWSGIServer
    from waitress.task import WSGITask

    class ClosingTask(WSGITask):
        """Answers as if the client had asked to close: while draining, no connection is
        kept alive, so the edge's cached connections to this host end with their answer
        and its next request goes to another host (a POST on a connection closed under
        it is never retried: a 502)."""

        def build_response_header(self):
            self.request.headers["CONNECTION"] = "close"
            return super().build_response_header()

    class ClosingChannel(HTTPChannel):
        task_class = ClosingTask

    # A MultiSocketServer (several listeners) keeps its map in .map, a single one in ._map.
    socket_map = getattr(server, "map", None)
    if socket_map is None:
        socket_map = server._map
    # The handler writes a byte to a pipe, the drain thread waits on it: no lock is taken
    # in the handler. With threading.Event.set, a second SIGTERM (systemd's and the parent
    # process's) arriving inside the first handler's set() deadlocked on the Event's lock,
    # and the process never stopped.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)

    drain_started = [0.0]

    def waiting_for(channel) -> bool:
        """A request is in the channel, being read, or being answered; or the channel is
        new and its request has not arrived yet (closing it then reset the client: a
        connection accepted from the backlog at the stop has sent nothing yet); or it is
        an idle keep-alive channel within the grace. Its client may be sending a request
        on it at this moment: closed under the edge, its POST was cut (a 502, as nginx
        never re-sends one). Within the grace the edge closes it (its upstream
        keepalive_timeout is shorter) or uses it once more, and the answer closes it."""
        return bool(
            channel.requests
            or channel.total_outbufs_len
            or channel.request is not None
            or channel.last_activity == channel.creation_time
            or time.monotonic() < drain_started[0] + keepalive_grace
        )

    def busy() -> int:
        return sum(
            1
            for channel in list(socket_map.values())
            if isinstance(channel, HTTPChannel) and waiting_for(channel)
        )

    accepting_stopped = threading.Event()
    listeners = [d for d in list(socket_map.values()) if isinstance(d, BaseWSGIServer)]

    def stop_accepting() -> None:
        """In waitress's loop (a trigger thunk): closing a socket in the signal handler
        itself broke the select() it interrupted (EBADF). New handshakes are refused
        first; the listener stays open `HANDSHAKE_GRACE` seconds more, for those the
        kernel had begun."""
        drain_started[0] = time.monotonic()
        for channel in list(socket_map.values()):
            if isinstance(channel, HTTPChannel):
                channel.task_class = ClosingTask
        for listener in listeners:
            listener.channel_class = ClosingChannel
            refuse_new_handshakes(listener.socket)

    def close_listeners() -> None:
        """In waitress's loop, as stop_accepting."""
        for listener in listeners:
            # Take what already waits in the backlog (closing would reset it), then
            # stop accepting; the connections it made stay.
            for _ in range(1000):
                if not select.select([listener.socket], [], [], 0)[0]:
                    break
                listener.handle_accept()
            # The socket only: BaseWSGIServer.close would also close the trigger that
            # the request threads pull when their answers are ready.
            wasyncore.dispatcher.close(listener)
        accepting_stopped.set()

    def drain() -> None:
        """A thread of its own, started before any signal: the handler only writes a byte.
        Pulling waitress's trigger from the handler deadlocked when the signal came while
        the loop held the trigger's lock (running thunks): the process never stopped."""
        os.read(wake_read, 1)
        listeners[0].trigger.pull_trigger(stop_accepting)
        time.sleep(HANDSHAKE_GRACE)
        listeners[0].trigger.pull_trigger(close_listeners)
        accepting_stopped.wait()
        log.info("SIGTERM: draining %d connection(s)", busy())
        deadline = time.monotonic() + seconds
        while busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        log.info("drained (%d connection(s) still busy); stopping", busy())
        # waitress's loop ends on KeyboardInterrupt in the main thread.
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=drain, name="drain", daemon=True).start()

    def on_sigterm(_signum, _frame) -> None:
        # systemd and the parent process may both send it: the drain starts once.
        with contextlib.suppress(BlockingIOError):
            os.write(wake_write, b"x")

    signal.signal(signal.SIGTERM, on_sigterm)


def serve_processes(config: Config) -> int:
    # Before any process imports prometheus_client: it picks its storage at import.
    metrics_dir = tempfile.mkdtemp(prefix="mlops-serving-metrics-")
    os.environ[METRICS_DIR] = metrics_dir
    from .service import shared_decode_slots

    decode_slots = shared_decode_slots()
    # Imported once here, shared by the forked processes (each starts faster).
    from . import app  # noqa: F401

    listener = socket.create_server((config.web_host, config.web_port), backlog=2048)
    # Connections wait in the backlog until the processes accept them.
    notify_systemd("READY=1")
    children: set[int] = set()
    for _ in range(config.web_processes):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve_app(config, decode_slots, sockets=[listener])
            except BaseException:
                log.exception("waitress process %s failed", os.getpid())
                code = 1
            os._exit(code)
        children.add(pid)
    listener.close()
    log.info(
        "%d waitress processes on %s:%d: %s",
        len(children),
        config.web_host,
        config.web_port,
        children,
    )

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
    parser = argparse.ArgumentParser(prog="mlops-serving", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="listen address (MLOPS_WEB_HOST)")
    parser.add_argument("--port", type=int, help="port (MLOPS_WEB_PORT)")
    parser.add_argument("--threads", type=int, help="threads per process (MLOPS_WEB_THREADS)")
    parser.add_argument(
        "--processes", type=int, help="waitress processes sharing the port (MLOPS_WEB_PROCESSES)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    overrides = {
        f"MLOPS_WEB_{name.upper()}": str(value)
        for name, value in vars(args).items()
        if value is not None
    }
    # `kill -USR1 <pid>` prints every thread's stack to the journal: a hung process explains itself.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    config = Config.from_env({**os.environ, **overrides})
    if config.web_processes < 1 or config.web_threads < 1:
        parser.error("--processes and --threads must be at least 1")
    if config.web_processes == 1:
        from .service import shared_decode_slots

        serve_app(config, shared_decode_slots(), host=config.web_host, port=config.web_port)
    else:
        sys.exit(serve_processes(config))


if __name__ == "__main__":
    main()
