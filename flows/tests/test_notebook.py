"""A scientist's laptop: the example notebook runs headless against the real services."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "flows" / "notebooks" / "laptop.ipynb"


@pytest.fixture(scope="module")
def scientist(services, production_model) -> dict:
    """A person with the scientist role, as the mlflow role provisions people."""
    grants = yaml.safe_load((ROOT / "roles" / "mlflow" / "defaults" / "main.yml").read_text())
    password = secrets.token_urlsafe(18)
    services.provision_mlflow(
        users={"sam": password},
        grants={},
        people=[{"name": "sam", "roles": ["scientist"]}],
        role_grants=grants["mlflow_people_grants"],
    )
    return {
        **services.client_env("worker"),
        "MLFLOW_TRACKING_USERNAME": "sam",
        "MLFLOW_TRACKING_PASSWORD": password,
    }


def test_the_laptop_notebook_trains_logs_a_candidate_and_compares(scientist, monkeypatch):
    import nbformat
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from nbclient import NotebookClient

    for name, value in {
        **scientist,
        "MLOPS_NOTEBOOK_EPOCHS": "1",
        "MLOPS_NOTEBOOK_DATA_VERSION": "data-v1",
    }.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3").execute()
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )
    print("\n" + printed)
    assert "candidate version" in printed and "production (version" in printed

    client = MlflowClient()
    candidates = client.search_model_versions("name='mnist-candidates'")
    assert candidates, "the notebook registered no candidate"
    runs = client.search_runs([client.get_experiment_by_name("mnist-sam").experiment_id])
    assert any(run.data.params.get("where") == "laptop" for run in runs)
    # Promotion is the gate's or an operator's: the scientist gets 403.
    with pytest.raises(MlflowException) as refused:
        client.set_registered_model_alias("mnist", "production", candidates[0].version)
    assert refused.value.get_http_status_code() == 403
