"""playbooks/people.yml (the last play of site.yml) with an inventory as users write one."""

from test_inventory_validation import inventory, run_playbook


def test_people_settings_land_beside_the_inventory(tmp_path):
    """No mlops_credentials_dir set: the default, beside the inventory's folder. The play runs
    on the implicit localhost, which has no inventory_dir of its own (make up failed there)."""
    people = [{"name": "ann", "roles": ["scientist"]}, {"name": "rob", "roles": ["reviewer"]}]
    result = run_playbook("playbooks/people.yml", inventory(mlops_people=people), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    folder = tmp_path.parent / f"{tmp_path.name}.credentials" / "people"
    assert sorted(path.name for path in folder.glob("*.env")) == ["ann.env", "rob.env"]
    ann = (folder / "ann.env").read_text()
    assert 'MLFLOW_TRACKING_USERNAME="ann"' in ann and "MLOPS_S3_ENDPOINT=" in ann
    assert "MLOPS_S3_ENDPOINT=" not in (folder / "rob.env").read_text()
    # The services speak TLS between hosts: the settings name https URLs and the CA.
    assert 'MLFLOW_TRACKING_URI="https://' in ann
    assert f'AWS_CA_BUNDLE="{tmp_path.parent / f"{tmp_path.name}.credentials"}/ca/ca.crt"' in ann
    # A laptop reaches MLflow only through its URL: artifacts stream through it, not from
    # presigned URLs at the object store's address behind the edge.
    assert 'MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD="false"' in ann
