"""Fixtures shared by every test folder: the platform's real services.

`services` starts PostgreSQL, SeaweedFS, MLflow and Prefect on this machine
once per test session (tools/test_services.py) and stops them at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "tools"))


def pytest_collection_modifyitems(items):
    """Mark the tests that need the running services (`make test-quick` leaves them out)."""
    for item in items:
        if "services" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def services():
    from test_services import Services

    state = Path(tempfile.mkdtemp(prefix="mlops-services-"))
    started = Services(state)
    started.start()
    print(f"\ntest services up in {started.info['startup_seconds']} s (state: {state})")
    yield started
    started.stop()
    if not os.environ.get("MLOPS_KEEP_TEST_SERVICES"):
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def worker_env(services, monkeypatch):
    """This process configured like a worker host (the prefect_worker role's environment)."""
    for name, value in services.client_env("worker").items():
        monkeypatch.setenv(name, value)
    return services.client_env("worker")


@pytest.fixture(scope="session")
def production_model(services):
    """A trained model version holding the `production` alias (trains one when none does)."""
    from mlflow import MlflowClient

    env = services.client_env("worker")
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        client = MlflowClient()
        try:
            version = client.get_model_version_by_alias("mnist", "production")
        except Exception:
            import subprocess

            bin_dir = Path(sys.executable).parent
            subprocess.run(
                [str(bin_dir / "mlops-flows"), "data", "bootstrap"], check=True, capture_output=True
            )
            from mlops_flows.flows import train

            train(data_version="data-v2", epochs=3)
            version = client.get_model_version_by_alias("mnist", "production")
        return version
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
