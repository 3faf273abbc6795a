"""What strangers and bad days do to the web app: it stays up, honest and bounded."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import requests
from PIL import Image
from webapp import free_port, outbox_empty, start_web, wait_ready


def login(web, username: str, password: str, next_url: str = "") -> requests.Response:
    """The login form as a browser sends it: a CSRF token from the page, then the POST."""
    session = requests.Session()
    page = session.get(web.url + "/login", timeout=30).text
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    query = f"?next={next_url}" if next_url else ""
    return session.post(
        web.url + "/login" + query,
        data={"csrf_token": token, "username": username, "password": password},
        allow_redirects=False,
        timeout=30,
    )


def test_after_login_the_app_never_sends_anyone_to_another_site(web):
    for target in (
        "/%09/evil.example",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "/%0d%0a/evil.example",
        "/review/../../evil",
    ):
        answer = login(web, *web.reviewer, next_url=target)
        assert answer.status_code == 302, target
        location = answer.headers["Location"]
        assert location in ("/review", f"{web.url}/review"), (target, location)
    kept = login(web, *web.reviewer, next_url="/review?status=confirmed")
    assert kept.headers["Location"].endswith("/review?status=confirmed")


def forget_login_failures(services) -> None:
    with psycopg.connect(services.owner_database_url(), autocommit=True) as conn:
        conn.execute("DELETE FROM login_failures")


EDGE = "127.0.0.2"  # the app trusts this address as its proxy (loopback: any 127.x is ours)
FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


def request_from(app, source: str, method: str, path: str, headers: dict, body=None):
    """A request whose TCP peer is `source`, as the edge's (or a stranger's) would be."""
    port = int(app.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=30, source_address=(source, 0)
    )
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        return answer
    finally:
        connection.close()


def review_with_basic_auth(app, source: str, password: str, headers: dict) -> int:
    token = base64.b64encode(f"reviewer:{password}".encode()).decode()
    body = json.dumps({"upload_id": "x", "action": "confirm", "seen_label": 1})
    answer = request_from(
        app,
        source,
        "POST",
        "/api/v1/review",
        {**headers, "Authorization": f"Basic {token}", "Content-Type": "application/json"},
        body,
    )
    return answer.status


def test_password_guessing_is_slowed_per_client_named_by_the_edge_only(services, tmp_path):
    forget_login_failures(services)  # earlier tests' wrong passwords came from this client too
    app = start_web(
        services,
        tmp_path,
        MLOPS_LOGIN_FAILURES_PER_CLIENT="3",
        MLOPS_LOGIN_WINDOW_SECONDS="60",
        MLOPS_TRUSTED_PROXY=EDGE,
    )
    try:
        # A stranger's forged X-Forwarded-For does not hide where the guesses come from.
        forged = {"X-Forwarded-For": "198.51.100.9"}
        statuses = [
            review_with_basic_auth(app, "127.0.0.1", f"guess-{i}", forged) for i in range(3)
        ]
        assert statuses == [401, 401, 401]
        blocked = login(app, *app.reviewer)  # even the right password, for now
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
        basic = app.post(
            "/api/v1/review",
            json={"upload_id": "x", "action": "confirm", "seen_label": 1},
            auth=app.reviewer,
        )
        assert basic.status_code == 429
        # Through the edge, the client is the one it names: another client, not blocked.
        assert review_with_basic_auth(app, EDGE, "wrong", FORWARDED) == 401
        assert review_with_basic_auth(app, EDGE, app.reviewer[1], FORWARDED) != 429
        log = app.log.read_text()
        assert log.count("failed login for account 'reviewer' from 127.0.0.1") == 3
        assert log.count("failed login for account 'reviewer' from 203.0.113.7") == 1
        assert "198.51.100.9" not in log
        # Session cookies are Secure when the edge says the client used HTTPS; plain HTTP,
        # or a stranger claiming HTTPS, gets a cookie that still works over HTTP.
        cookies = {
            (source, proto): request_from(
                app, source, "GET", "/login", {"X-Forwarded-Proto": proto}
            ).getheader("Set-Cookie", "")
            for source in (EDGE, "127.0.0.1")
            for proto in ("https", "http")
        }
        assert "; Secure" in cookies[(EDGE, "https")], cookies
        for key in ((EDGE, "http"), ("127.0.0.1", "https"), ("127.0.0.1", "http")):
            assert cookies[key].startswith("session=") and "; Secure" not in cookies[key], cookies
    finally:
        app.stop()
        forget_login_failures(services)


def test_the_outbox_is_bounded_and_a_hung_store_never_stalls_requests(
    services, production_model, test_images, tmp_path
):
    """The object store stopped (SIGSTOP) under load: no request waits on it much over a second;
    past the outbox's byte limit predictions get 503 with Retry-After; nothing is lost."""
    weed = services.processes["seaweedfs"]
    app = start_web(
        services,
        tmp_path,
        MLOPS_STORE_MAX_DELAY_SECONDS="1",
        MLOPS_OUTBOX_MAX_BYTES=str(64 * 1024),  # a few hundred of these small PNGs
    )
    statuses: list[int] = []
    slowest = [0.0, 0.0, 0]  # seconds, when it started, its status
    stop = threading.Event()

    def keep_predicting(offset: int) -> None:
        i = offset
        while not stop.is_set():
            data = test_images[i % len(test_images)][0] + f"hung{i}".encode()
            i += 4
            started = time.monotonic()
            answer = app.post("/api/v1/predict", files={"file": ("d.png", data)})
            seconds = time.monotonic() - started
            if seconds > slowest[0]:
                slowest[:] = [seconds, started, answer.status_code]
            statuses.append(answer.status_code)
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) > 0
                time.sleep(0.2)

    threads = [threading.Thread(target=keep_predicting, args=(k,)) for k in range(4)]
    try:
        wait_ready(app)
        outbox_empty(app.env)
        for thread in threads:
            thread.start()
        time.sleep(3)  # load before the outage: the outbox is overdue and requests help
        os.killpg(weed, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            time.sleep(15)
        finally:
            os.killpg(weed, signal.SIGCONT)
        stop.set()
        for thread in threads:
            thread.join()
        drained = time.monotonic()
        outbox_empty(app.env, timeout=120)
        drained = time.monotonic() - drained
    finally:
        stop.set()
        os.killpg(weed, signal.SIGCONT)
        app.stop()
    accepted, refused = statuses.count(200), statuses.count(503)
    print(
        f"\n{len(statuses)} requests with the store hung for 15 s: {accepted} answered,"
        f" {refused} refused with 503 (outbox full); slowest {slowest[0]:.2f} s"
        f" (status {slowest[2]}, sent {slowest[1] - stopped:+.1f} s from the stop);"
        f" the outbox drained {drained:.1f} s after the store came back"
    )
    assert set(statuses) <= {200, 503} and accepted and refused
    assert slowest[0] < 2.5


def test_the_web_app_starts_and_serves_while_mlflow_is_down(
    services, production_model, test_images, tmp_path
):
    """The model kept by an earlier process serves at once; /readyz says MLflow is unreachable."""
    models = tmp_path / "models"
    first = start_web(services, tmp_path / "first", MLOPS_MODEL_DIR=str(models))
    try:
        wait_ready(first)
        first.predict(test_images[0][0])
    finally:
        first.stop()
    started = time.monotonic()
    down = start_web(
        services,
        tmp_path / "down",
        MLOPS_MODEL_DIR=str(models),
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
    )
    try:
        body = down.predict(test_images[1][0])
        seconds = time.monotonic() - started
        deadline = time.monotonic() + 60
        while (ready := down.get("/readyz").json())["mlflow"] == "not asked yet":
            assert time.monotonic() < deadline, "the app never tried MLflow"
            time.sleep(0.5)
    finally:
        down.stop()
    print(f"\nwith MLflow down: a served prediction {seconds:.1f} s after the process started")
    assert body["model_version"] == production_model.version
    assert ready["status"] == "ready" and ready["mlflow"] == "unreachable"
    assert seconds < 10


def test_systemd_hears_the_app_is_ready_only_once_its_port_takes_connections(services, tmp_path):
    """Type=notify: READY=1 once the listener is open, so that the TLS front, started after
    the app, never takes a connection the app's port would refuse (a 502 at the edge)."""
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    port = free_port()
    heard: list = []

    def listen_for_ready() -> None:
        notify.settimeout(120)
        message = notify.recv(256)
        # At that moment the port must take a connection.
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            heard.append((message, "port open"))
        except OSError as error:
            heard.append((message, f"port refused: {error}"))

    listener = threading.Thread(target=listen_for_ready)
    listener.start()
    web = start_web(
        services,
        tmp_path / "web",
        port=port,
        NOTIFY_SOCKET=str(notify_path),
        MLOPS_WEB_PROCESSES="2",
    )
    try:
        listener.join(timeout=120)
    finally:
        web.stop()
        notify.close()
    assert heard == [(b"READY=1", "port open")]


def pixel_bomb(side: int = 5000) -> bytes:
    """A small PNG that decodes to side x side pixels: cheap to send, costly to decode."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 255).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_costly_decodes_wait_their_turn_and_small_uploads_do_not(
    services, production_model, test_images, tmp_path
):
    app = start_web(services, tmp_path, MLOPS_DECODE_WAIT_SECONDS="0.05")
    bomb = pixel_bomb()
    try:
        wait_ready(app)
        with ThreadPoolExecutor(max_workers=4) as pool:
            bombs = [
                pool.submit(app.post, "/api/v1/predict", files={"file": ("b.png", bomb)})
                for _ in range(3)
            ]
            started = time.monotonic()
            small = app.post("/api/v1/predict", files={"file": ("d.png", test_images[0][0])})
            small_seconds = time.monotonic() - started
            answers = [future.result() for future in bombs]
    finally:
        app.stop()
    statuses = sorted(answer.status_code for answer in answers)
    print(f"\n3 pixel bombs at once: {statuses}; a small upload beside them: {small_seconds:.2f} s")
    assert small.status_code == 200
    assert 503 in statuses and all(code in (422, 503) for code in statuses)
    assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status_code == 503)
