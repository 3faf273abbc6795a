"""The loop learns the users' own handwriting, measured through the web app.

The users here write with a thick pen and a strong slant: MNIST test digits
dilated and sheared, a domain the production model never saw. Half of them
are uploaded through the API, labelled by their uploaders and confirmed by a
reviewer; `retrain` holds part out as the users' test set (the gate scores
both models on it) and trains on the rest; the other half is never uploaded
and measures the web app before and after. Runs last (it moves the alias;
it puts it back at the end).
"""

from __future__ import annotations

import io
import os
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image, ImageFilter
from webapp import start_web, wait_ready

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


@contextmanager
def environment(values: dict):
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


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
            deadline = time.monotonic() + 60
            while wait_ready(web)["model_version"] != outcome["version"]:
                assert time.monotonic() < deadline, "the web app did not follow the alias"
                time.sleep(1)
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
