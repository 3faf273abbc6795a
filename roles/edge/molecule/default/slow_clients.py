"""Slow clients against the edge, and an ordinary client beside them.

    python slow_clients.py HOST CA_FILE CLIENT_TIMEOUT PER_ADDRESS [PORT]

PORT: the entry point's 443 by default; the server's TLS front (5000, 4200,
9000) shares its bounds.

1. Slow clients over TLS: half send a request's headers a byte a second (the
   edge's header timeout counts the whole header), half send a body a byte
   every CLIENT_TIMEOUT + 1 seconds (its body timeout counts between reads).
   The edge must close each within CLIENT_TIMEOUT + a little, while an
   ordinary client, asking every half second, keeps getting its pages.
2. More requests at once than PER_ADDRESS, the edge's connections per address
   (each sends its headers, then nothing of its body): those past the limit
   are refused with 429 at once.
Prints one JSON line with the figures.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time

HEADERS = b"GET /hello HTTP/1.1\r\nHost: edge\r\nX-Slow: "
BODY = b"POST /api/v1/predict HTTP/1.1\r\nHost: edge\r\nContent-Length: 1000\r\n\r\n"


def connect(address: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=10)
    return context.wrap_socket(raw, server_hostname=address[0])


def slow_client(address, context, start: bytes, interval: float, results: list) -> None:
    """Send start, then a byte every interval, until the edge answers or closes."""
    began = time.monotonic()
    answer = b""
    try:
        conn = connect(address, context)
        conn.sendall(start)
        conn.settimeout(interval)
        while time.monotonic() - began < 60:
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                conn.sendall(b"a")
                continue
            answer += chunk
            if not chunk or b"\r\n\r\n" in answer:
                break
    except OSError:
        pass
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
    results.append((status, round(time.monotonic() - began, 1)))


def ordinary_client(address, context, stop: threading.Event, seen: list) -> None:
    while not stop.is_set():
        began = time.monotonic()
        try:
            conn = connect(address, context)
            conn.sendall(b"GET /hello HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            conn.close()
            seen.append((answer.split(b" ", 2)[1].decode(), time.monotonic() - began))
        except OSError as error:
            seen.append((type(error).__name__, time.monotonic() - began))
        stop.wait(0.5)


def run_all(targets) -> None:
    threads = [threading.Thread(target=target, args=args) for target, args in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(address: tuple[str, int], ca_file: str, client_timeout: int, per_address: int) -> int:
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False  # the certificate names the address; no SNI needed

    slow, seen, stop = [], [], threading.Event()
    ordinary = threading.Thread(target=ordinary_client, args=(address, context, stop, seen))
    ordinary.start()
    run_all(
        [(slow_client, (address, context, HEADERS, 1.0, slow)) for _ in range(5)]
        + [(slow_client, (address, context, BODY, client_timeout + 1.0, slow)) for _ in range(5)]
    )
    stop.set()
    ordinary.join()

    # Headers sent, then silence: each is closed after the body timeout, or refused at once.
    crowd: list = []
    run_all(
        [
            (slow_client, (address, context, BODY, client_timeout + 1.0, crowd))
            for _ in range(per_address + 5)
        ]
    )
    print(
        json.dumps(
            {
                "slow_clients": len(slow),
                "slow_statuses": sorted({status for status, _ in slow}),
                "slow_longest_held_s": max(held for _, held in slow),
                "ordinary_requests": len(seen),
                "ordinary_statuses": sorted({status for status, _ in seen}),
                "ordinary_slowest_s": round(max(seconds for _, seconds in seen), 2),
                "crowd": len(crowd),
                "crowd_refused_429": sum(status == "429" for status, _ in crowd),
                "crowd_refused_within_s": max(
                    [held for status, held in crowd if status == "429"], default=None
                ),
            }
        )
    )
    return 0


if __name__ == "__main__":
    port = int(sys.argv[5]) if len(sys.argv) > 5 else 443
    sys.exit(main((sys.argv[1], port), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
