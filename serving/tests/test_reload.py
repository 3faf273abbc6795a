"""The model behind the web app changes without failed requests; no model means 503."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import signal
import socket
import threading
import time

from webapp import environment, start_web, wait_ready, web_env


def test_a_new_production_version_is_picked_up_within_30_s_with_no_failed_request(
    web, services, test_images
):
    import mlflow
    from mlflow import MlflowClient

    stop = threading.Event()
    outcomes: list[tuple[float, int, str]] = []

    def keep_predicting() -> None:
        i = 0
        while not stop.is_set():
            data, _ = test_images[i % len(test_images)]
            i += 1
            try:
                answer = web.post("/api/v1/predict", files={"file": ("d.png", data)})
                version = answer.json().get("model_version", "") if answer.ok else ""
                outcomes.append((time.monotonic(), answer.status_code, version))
            except Exception as error:  # a dropped connection is a failed request too
                outcomes.append((time.monotonic(), 0, repr(error)))

    threads = [threading.Thread(target=keep_predicting) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        with environment(services.client_env("worker")):
            while len(outcomes) < 50:  # under load before the alias moves
                time.sleep(0.05)
            client = MlflowClient()
            before = client.get_model_version_by_alias("mnist", "production")
            # A new version of the same weights, moved to production by hand.
            new = mlflow.register_model(before.source, "mnist", tags=before.tags)
            client.set_registered_model_alias("mnist", "production", new.version)
            moved_at = time.monotonic()
            # Each process polls and loads on its own: the second can switch seconds after
            # the first (7.8 s later on this 2-core machine with the molecule lane beside).
            wait_ready(web, timeout=45, model_version=new.version)
            all_new_at = time.monotonic()
            served_new = len(outcomes)
            while len(outcomes) < served_new + 50:
                time.sleep(0.05)  # and still under load after the switch
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    failed = [o for o in outcomes if o[1] != 200]
    first_new = min((t for t, _, v in outcomes if v == new.version), default=None)
    assert not failed, failed[:5]
    assert first_new is not None, "the new version was never served"
    seconds = first_new - moved_at
    print(
        f"\n{len(outcomes)} requests, 0 failed; version {new.version} served"
        f" {seconds:.1f} s after the alias moved, by every process after"
        f" {all_new_at - moved_at:.1f} s"
    )
    assert seconds <= 30


def test_without_a_production_model_pages_say_so_and_the_api_answers_503(services, tmp_path):
    app = start_web(services, tmp_path, MLOPS_MODEL_ALIAS="nobody-holds-this")
    try:
        assert app.get("/readyz").status_code == 503
        answer = app.post("/api/v1/predict", files={"file": ("d.png", b"whatever")})
        assert answer.status_code == 503
        assert "no production model" in answer.json()["error"]
        page = app.get("/")
        assert page.status_code == 200 and 'id="no-model"' in page.text
        assert 'id="no-model"' in app.get("/status").text
    finally:
        app.stop()


def test_when_mlflow_is_unreachable_the_loaded_model_keeps_serving(
    services, production_model, test_images, tmp_path
):
    """In process: point the MLflow client at a closed port after the model loaded."""
    import mlops_serving.app as serving

    env, _ = web_env(services, tmp_path)
    with environment(env):
        app = serving.create_app(start_background=False)
        holder = app.extensions["mlops"].models
        assert holder.refresh() is True
        loaded = holder.current.version
        os.environ["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # nothing listens there
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        assert holder.refresh() is False
        assert holder.last_error
        assert holder.current.version == loaded
        client = app.test_client()
        data, _ = test_images[0]
        answer = client.post("/api/v1/predict", data={"file": (io.BytesIO(data), "d.png")})
        assert answer.status_code == 200 and answer.get_json()["model_version"] == loaded


def test_a_stop_answers_every_request_in_flight(services, production_model, tmp_path):
    """SIGTERM to every process (as systemd stops the unit): the requests the app holds are
    answered, new connections are refused (the edge sends those to another host)."""
    import numpy as np
    import requests
    from PIL import Image

    app = start_web(services, tmp_path / "drain", MLOPS_WEB_PROCESSES="2")
    wait_ready(app, timeout=120)
    pixels = np.zeros((28, 28), np.uint8)
    pixels[4:24, 12:16] = 255  # a 1
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    body = buffer.getvalue()
    stop_at: list[float] = []
    outcomes: list[tuple[float, float, str]] = []  # started, ended, "200" or what failed
    lock = threading.Lock()

    def client(k: int) -> None:
        i = 0
        while True:
            started = time.monotonic()
            try:
                # A new connection each time, as the edge's to a stopping host would be refused.
                answer = requests.post(
                    f"{app.url}/api/v1/predict",
                    files={"file": (f"{k}-{i}.png", body + f"{k}-{i}".encode(), "image/png")},
                    headers={"Connection": "close"},
                    timeout=30,
                )
                result = str(answer.status_code)
                if answer.status_code != 200:
                    result += f" {answer.text[:200]}"
            except requests.ConnectionError as error:
                result = "refused" if "refused" in str(error).lower() else f"broken: {error}"
            with lock:
                outcomes.append((started, time.monotonic(), result))
            if result == "refused" or (stop_at and time.monotonic() > stop_at[0] + 15):
                return
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    # A connection the app accepted whose request has not arrived by the stop, and two idle
    # keep-alive ones (answered before the stop): one gets a request during the drain, the
    # other nothing.
    host, port = app.url.removeprefix("http://").split(":")
    quiet = socket.create_connection((host, int(port)), timeout=30)
    idle = [http.client.HTTPConnection(host, int(port), timeout=30) for _ in range(2)]
    for conn in idle:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
    time.sleep(3)
    stop_at.append(time.monotonic())
    os.killpg(app.process.pid, signal.SIGTERM)
    time.sleep(0.5)
    # Within the keep-alive grace an idle connection is still open (closed under the edge,
    # its next POST was cut): a request on it is answered, and the answer closes it.
    idle[0].request("GET", "/healthz")
    reused = idle[0].getresponse()
    reused_answer = (reused.status, reused.getheader("Connection"), reused.read())
    idle[0].close()
    # Keep-alive (HTTP/1.1's default): a draining app answers, then closes.
    quiet.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    quiet_answer = quiet.makefile("rb").read()  # to the end: the app closed the connection
    quiet.close()
    # The untouched idle connection: closed by the app once the grace is over.
    idle[1].sock.settimeout(30)
    idle_end = idle[1].sock.recv(1)
    idle_closed_after = time.monotonic() - stop_at[0]
    idle[1].close()
    for thread in threads:
        thread.join(timeout=60)
    app.process.wait(timeout=30)

    def shed_before_the_stop(ended: float, result: str) -> bool:
        """A 503 answered before the stop is the app shedding load on a busy machine (CI
        saw some, not reproduced here), not the drain: reported, not failed."""
        return result.startswith("503") and ended < stop_at[0]

    failed = [
        f"{result} ({started - stop_at[0]:+.2f}..{ended - stop_at[0]:+.2f} s from the stop)"
        for started, ended, result in outcomes
        if result not in ("200", "refused") and not shed_before_the_stop(ended, result)
    ]
    shed = [
        f"{result} ({ended - stop_at[0]:+.2f} s from the stop)"
        for _, ended, result in outcomes
        if shed_before_the_stop(ended, result)
    ]
    in_flight = [
        result
        for started, ended, result in outcomes
        if started < stop_at[0] < ended and result != "refused"
    ]
    answered_in_flight = [result for result in in_flight if result == "200"]
    print(
        f"\n{len(outcomes)} requests; at the stop {len(in_flight)} in flight, all answered:"
        f" {len(answered_in_flight) == len(in_flight)}; failed: {failed[:5]};"
        f" 503 before the stop: {len(shed)} {shed[:3]}; an idle keep-alive connection"
        f" closed {idle_closed_after:.1f} s after the stop"
    )
    complaints = [line for line in app.log.read_text().splitlines() if "WARNING" in line]
    assert not failed, complaints[-10:]
    assert reused_answer[:2] == (200, "close"), reused_answer
    # web_keepalive_grace_seconds (5) after the stop, before web_drain_seconds (10) is over
    assert idle_end == b"" and 4.5 <= idle_closed_after <= 12, (idle_end, idle_closed_after)
    assert quiet_answer.startswith(b"HTTP/1.1 200"), quiet_answer
    assert b"\r\nConnection: close\r\n" in quiet_answer, quiet_answer
    assert in_flight and len(answered_in_flight) == len(in_flight)
    assert "drained" in app.log.read_text()


def test_a_listener_closed_after_refusing_new_handshakes_resets_no_client():
    """The stop's last step, alone and repeated: 8 clients reconnect as fast as they can
    while the backlog is drained and the listener closed. Without the filter every stop
    here reset some of them (CI once saw one in the test above); with it, none."""
    import select

    from mlops_serving.server import HANDSHAKE_GRACE, refuse_new_handshakes

    def answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(100)
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")

    def one_stop() -> list[str]:
        listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
        port = listener.getsockname()[1]
        broken: list[str] = []

        def client() -> None:
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                        conn.sendall(b"GET / HTTP/1.1\r\n\r\n")
                        if not conn.recv(100):
                            broken.append("closed unanswered")
                except ConnectionRefusedError:
                    return
                except OSError as error:
                    broken.append(repr(error))

        clients = [threading.Thread(target=client) for _ in range(8)]
        for thread in clients:
            thread.start()
        started = time.monotonic()
        while time.monotonic() < started + 0.2:  # serving
            if select.select([listener], [], [], 0.01)[0]:
                answer(listener.accept()[0])
        refuse_new_handshakes(listener)
        waiting = time.monotonic() + HANDSHAKE_GRACE
        while time.monotonic() < waiting:  # still answering, as waitress does
            if select.select([listener], [], [], 0.01)[0]:
                threading.Thread(target=answer, args=(listener.accept()[0],)).start()
        for _ in range(1000):  # what waits in the backlog, then the close
            if not select.select([listener], [], [], 0)[0]:
                break
            threading.Thread(target=answer, args=(listener.accept()[0],)).start()
        listener.close()
        for thread in clients:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in clients), "a client never got refused"
        return broken

    broken = [one_stop() for _ in range(10)]
    assert not any(broken), broken
