"""The web app under real waitress, against the real services, with a trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
from webapp import OUTPUT, environment, start_web, wait_ready


@pytest.fixture(scope="module")
def web(services, production_model, tmp_path_factory):
    # Two waitress processes, as on a web host with two cores or more.
    app = start_web(services, tmp_path_factory.mktemp("web"), MLOPS_WEB_PROCESSES="2")
    wait_ready(app)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def test_images(services, production_model, tmp_path_factory):
    """The test set the production model was scored on: (png bytes, label) pairs.

    Its own data version, not the newest: the flows tests publish tiny trees of their own.
    """
    from mlops_flows.config import Settings
    from mlops_flows.datarepo import DataRepo

    with environment(services.client_env("worker")):
        repo = DataRepo(Settings.from_env())
        version = repo.fetch(
            production_model.tags["data_version"], tmp_path_factory.mktemp("data") / "repo"
        )
    files = sorted((version.path / "test").glob("[0-9]/*.png"))
    return [(path.read_bytes(), int(path.parent.name)) for path in files]


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT
