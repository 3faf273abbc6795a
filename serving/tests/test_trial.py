"""The model on trial, through the web app: it learns the users' own handwriting, and a
bad version is rolled back by the users' feedback.

The users here write with a thick pen and a strong slant: MNIST test digits
dilated and sheared, a domain the production model never saw. Half of them
are uploaded through the API, labelled by their uploaders and confirmed by a
reviewer; `retrain` holds part out as the users' test set (the gate scores
both models on it) and trains on the rest; the other half is never uploaded
and measures the web app before and after.

Then a deliberately bad version (never trained) is forced into production;
the uploaders' feedback says it is wrong, and the watch moves the alias back
once it has its configured number of labelled predictions, with the alert
raised in an Alertmanager stand-in (an HTTP server that records what it gets).
These tests move the alias; each puts it back.
"""

from __future__ import annotations

import io
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from browser import chromium
from PIL import Image, ImageFilter
from webapp import OUTPUT, environment, samples, start_web, wait_ready

UPLOADS = 500  # with half held out: 250 or so, enough for the users' set to count for more
EVALUATED = 500


def thick_and_slanted(pixels: np.ndarray) -> bytes:
    """A 28x28 PNG, light on dark like MNIST (the web app only cleans such an image)."""
    image = Image.fromarray(pixels, mode="L").filter(ImageFilter.MaxFilter(3))
    shear = 0.45  # about 24 degrees, past the training augmentation's 10
    image = image.transform((28, 28), Image.Transform.AFFINE, (1, shear, -shear * 14, 0, 1, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def web(services, production_model, tmp_path_factory):
    app = start_web(services, tmp_path_factory.mktemp("web-domain"))
    wait_ready(app)
    yield app
    app.stop()


def accuracy(web, images: list[tuple[bytes, int]]) -> tuple[float, set[str]]:
    answers = [(web.predict(data), label) for data, label in images]
    versions = {answer["model_version"] for answer, _ in answers}
    return sum(answer["digit"] == label for answer, label in answers) / len(answers), versions


def test_confirmed_uploads_of_a_new_handwriting_raise_its_accuracy(
    web, services, production_model, tmp_path
):
    from mlflow import MlflowClient
    from mlops_flows import dataset
    from mlops_flows.config import Settings
    from mlops_flows.datarepo import DataRepo
    from mlops_flows.flows import retrain

    worker = {**services.client_env("worker"), "MLOPS_USERS_TEST_SHARE": "0.5"}
    with environment(worker):
        repo = DataRepo(Settings.from_env())
        base = repo.fetch(production_model.tags["data_version"], tmp_path / "base").path
        # A clean version to add the uploads to: the production model's data, as a new version
        # (other tests publish small trees of their own; a retrain builds on the newest).
        images, labels, _ = dataset.load_split(base, "train")

        def clean(target, _base) -> None:
            dataset.write_split(
                target, "train", dataset.samples_from(images, labels, np.arange(len(labels) - 1))
            )
            for folder in (base / "test").glob("[0-9]"):
                (target / "test" / folder.name).mkdir(parents=True)
                for path in folder.glob("*.png"):
                    (target / "test" / folder.name / path.name).write_bytes(path.read_bytes())

        repo.publish(clean, needs_base=False)

    test_pixels, test_labels, _ = dataset.load_split(base, "test")
    order = np.random.default_rng(3).permutation(len(test_labels))
    domain = [(thick_and_slanted(test_pixels[i]), int(test_labels[i])) for i in order]
    uploads, evaluated = domain[:UPLOADS], domain[UPLOADS : UPLOADS + EVALUATED]

    before, served_before = accuracy(web, evaluated)
    for data, label in uploads:
        answer = web.predict(data)
        token = {"upload_id": answer["upload_id"], "feedback_token": answer["feedback_token"]}
        web.post("/api/v1/feedback", json={**token, "label": label}).raise_for_status()
        web.post(
            "/api/v1/review",
            json={"upload_id": answer["upload_id"], "action": "confirm", "seen_label": label},
            auth=web.reviewer,
        ).raise_for_status()

    previous = production_model.version
    with environment(worker):
        client = MlflowClient()
        try:
            outcome = retrain(epochs=6)
            print(f"\nretrain: {outcome['reason']}")
            assert outcome["uploads"] >= UPLOADS and outcome["promoted"], outcome["reason"]
            scores = {score["test_set"]: score for score in outcome["scores"]}
            assert scores["users"]["images"] >= 200, "the users' set counts for more"
            wait_ready(web, model_version=outcome["version"])  # it follows the alias
            after, served_after = accuracy(web, evaluated)
        finally:
            client.set_registered_model_alias("mnist", "production", previous)
    print(
        f"thick, slanted handwriting, {EVALUATED} images never uploaded, through the web app:"
        f" {before:.3f} with version {served_before} before, {after:.3f} with version"
        f" {served_after} after {UPLOADS} confirmed uploads"
        f" ({outcome['held_out']} of them held out as the users' test set:"
        f" production {scores['users']['production']:.3f}, candidate"
        f" {scores['users']['candidate']:.3f})"
    )
    assert served_after == {outcome["version"]}
    assert after >= before + 0.05, f"no clear gain: {before:.3f} -> {after:.3f}"


@contextmanager
def alert_receiver():
    """An HTTP server taking POST /api/v2/alerts as Alertmanager does; yields (url, received)."""
    received: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


def predict_with_feedback(web, images: list[tuple[bytes, int]]) -> list[str]:
    """Predict each image, then say (as its uploader) what it is; the versions that answered."""
    versions = []
    for data, label in images:
        answer = web.predict(data)
        versions.append(answer["model_version"])
        token = {"upload_id": answer["upload_id"], "feedback_token": answer["feedback_token"]}
        web.post("/api/v1/feedback", json={**token, "label": label}).raise_for_status()
    return versions


def test_a_bad_version_is_rolled_back_by_its_live_accuracy(
    web, services, production_model, tmp_path
):
    from mlflow import MlflowClient
    from mlops_flows import dataset, live
    from mlops_flows.config import Settings
    from mlops_flows.datarepo import DataRepo
    from mlops_flows.flows import train, watch

    items = 20
    good = production_model.version
    with environment(services.client_env("worker")):
        base = DataRepo(Settings.from_env()).fetch(
            production_model.tags["data_version"], tmp_path / "base"
        )
    pixels, labels, _ = dataset.load_split(base.path, "test")
    images = []
    for i in np.random.default_rng(11).permutation(len(labels))[: 3 * items]:
        buffer = io.BytesIO()
        Image.fromarray(pixels[i], mode="L").save(buffer, format="PNG")
        images.append((buffer.getvalue() + f"trial-{i}".encode(), int(labels[i])))

    # The good version's recent record: what the bad one will be compared with.
    assert set(predict_with_feedback(web, images[:items])) == {good}

    with alert_receiver() as (alertmanager, received):
        worker = {**services.client_env("worker"), "MLOPS_ALERTMANAGER_URL": alertmanager}
        with environment(worker):
            client = MlflowClient()
            try:
                # Never trained (0 epochs): the gate refuses it; an operator forces it in.
                bad = train(data_version=base.tag, epochs=0)
                assert bad["promoted"] is False
                client.set_model_version_tag("mnist", bad["version"], live.PREVIOUS_TAG, good)
                client.set_registered_model_alias("mnist", "production", bad["version"])
                wait_ready(web, model_version=bad["version"])

                half = predict_with_feedback(web, images[items : items + items // 2])
                assert set(half) == {bad["version"]}
                waiting = watch(items=items, margin=0.05)
                assert waiting["action"] == "waiting", waiting
                assert (
                    client.get_model_version_by_alias("mnist", "production").version
                    == bad["version"]
                )

                predict_with_feedback(web, images[items + items // 2 : 2 * items])
                judged = watch(items=items, margin=0.05)
            finally:
                holder = client.get_model_version_by_alias("mnist", "production").version
                if holder != good:
                    client.set_registered_model_alias("mnist", "production", good)
            print(f"\nwatch: {judged['reason']}")
            assert judged["action"] == "rolled back", judged
            assert holder == good
            assert judged["new"]["labelled"] == items
            assert judged["new"]["right"] / items < 0.5 < judged["old"]["right"] / items
            rolled = client.get_model_version("mnist", bad["version"])
            assert rolled.tags["promotion"] == "rolled back"
            assert rolled.tags["rollback_reason"] == judged["reason"]
            # The restored version is not put on trial again.
            again = watch(items=items, margin=0.05)
            assert again["action"] == "none" and again["version"] == good

    assert len(received) == 1, received
    path, alerts = received[0]
    assert path == "/api/v2/alerts"
    assert alerts[0]["labels"] == {
        "alertname": "ModelRolledBack",
        "severity": "warning",
        "model": "mnist",
        "version": bad["version"],
    }
    # The web app serves the good version again, by itself.
    wait_ready(web, model_version=good)
    assert set(predict_with_feedback(web, images[2 * items :])) == {good}


def test_a_candidate_shadows_production_then_takes_the_alias(
    web, services, production_model, tmp_path
):
    """Shadow mode through the web app: the candidate predicts beside production on every
    request while people get production's answer; the watch moves the alias once it has
    its predictions and was not worse on those people labelled."""
    from mlflow import MlflowClient
    from mlops_flows import dataset, tracking
    from mlops_flows.config import Settings
    from mlops_flows.datarepo import DataRepo
    from mlops_flows.flows import watch

    predictions = 12
    good = production_model.version
    worker = {**services.client_env("worker"), "MLOPS_SHADOW_PREDICTIONS": str(predictions)}
    with environment(worker):
        base = DataRepo(Settings.from_env()).fetch(
            production_model.tags["data_version"], tmp_path / "base"
        )
    pixels, labels, _ = dataset.load_split(base.path, "test")
    images = []
    for i in np.random.default_rng(17).permutation(len(labels))[:predictions]:
        buffer = io.BytesIO()
        Image.fromarray(pixels[i], mode="L").save(buffer, format="PNG")
        images.append((buffer.getvalue() + f"shadow-{i}".encode(), int(labels[i])))

    with environment(worker):
        client = MlflowClient()
        # The same model under a new version number: every shadowed digit agrees.
        candidate = client.copy_model_version(f"models:/mnist/{good}", "mnist").version
        try:
            tracking.start_shadow(client, "mnist", candidate)
            wait_ready(web, shadow_version=candidate)
            agree = (("agreement", "agree"), ("model_version", candidate))
            agreed_before = samples(web, "mlops_shadow_predictions_total").get(agree, 0.0)
            half = predictions // 2
            assert set(predict_with_feedback(web, images[:half])) == {good}, "production answers"
            waiting = watch(items=50, margin=0.05)["shadow"]
            assert waiting["action"] == "waiting", waiting
            assert f"{half} predictions beside production (agreement 1.000)" in waiting["reason"]

            assert set(predict_with_feedback(web, images[half:])) == {good}
            agreed = samples(web, "mlops_shadow_predictions_total").get(agree, 0.0)
            assert agreed - agreed_before == predictions
            with chromium() as browser:  # what a person sees, in test-output/
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.goto(web.url + "/status")
                assert page.inner_text("#shadow-version").startswith(f"version {candidate} ")
                assert page.inner_text("#shadow-count").strip() == str(predictions)
                assert page.inner_text("#shadow-agreement").strip() == "100.0 %"
                OUTPUT.mkdir(exist_ok=True)
                page.screenshot(path=str(OUTPUT / "8-status-shadow.png"), full_page=True)

            judged = watch(items=50, margin=0.05)["shadow"]
            print(f"\nshadow mode: {judged['reason']}")
            assert judged["action"] == "promoted", judged
            assert client.get_model_version_by_alias("mnist", "production").version == candidate
            assert client.get_model_version("mnist", candidate).tags[tracking.PREVIOUS_TAG] == good
            # The web app serves the candidate, and no longer shadows anything.
            wait_ready(web, model_version=candidate, shadow_version=None)
        finally:
            client.set_registered_model_alias("mnist", "production", good)
            if tracking.alias_version(client, "mnist", tracking.CANDIDATE) is not None:
                client.delete_registered_model_alias("mnist", tracking.CANDIDATE)
    wait_ready(web, model_version=good)
