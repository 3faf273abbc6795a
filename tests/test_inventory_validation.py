"""Inventories that cannot work fail early, with a message that says why."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def run_playbook(playbook: str, inventory: dict, tmp_path: Path, *extra: str):
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(path), str(ROOT / playbook), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def inventory(
    server=("srv1",),
    cpu=("cpu1",),
    cuda=(),
    web=("web1",),
    backup=("bak1",),
    edge=("web1",),
    **all_vars,
):
    def hosts(names):
        # validate.yml gathers the hosts' facts too: here, of this machine, with this Python.
        local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        return {"hosts": {name: dict(local) for name in names}}

    children = {
        "mlops_server": hosts(server),
        "workers": {"children": {"workers_cpu": hosts(cpu), "workers_cuda": hosts(cuda)}},
        "web": hosts(web),
        "backup": hosts(backup),
    }
    if edge is not None:
        children["edge"] = hosts(edge)
    return {"all": {"vars": all_vars, "children": children}}


@pytest.mark.parametrize("edge", [("web1",), None], ids=["with-an-edge", "without-an-edge-group"])
def test_a_sound_inventory_passes(tmp_path, edge):
    result = run_playbook("playbooks/validate.yml", inventory(edge=edge), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (inventory(server=()), "exactly one host in group mlops_server; it has 0"),
        (inventory(server=("srv1", "srv2")), "it has 2: srv1, srv2"),
        (inventory(cpu=("box1",), cuda=("box1",)), "not both: box1"),
        (inventory(backup=("srv1",)), "The server host srv1 cannot be in group backup"),
        (inventory(edge=("web1", "edge2")), "Group edge holds 2 hosts"),
    ],
    ids=["no-server", "two-servers", "cpu-and-cuda", "backups-on-the-server", "two-edges"],
)
def test_a_broken_inventory_fails_with_a_clear_message(tmp_path, broken, message):
    result = run_playbook("playbooks/validate.yml", broken, tmp_path)
    assert result.returncode != 0
    assert message in " ".join(result.stdout.split())


def test_an_unknown_object_store_is_refused(tmp_path):
    playbook = tmp_path / "contract.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Contract",
                    "hosts": "mlops_server",
                    "gather_facts": False,
                    "roles": ["mlops"],
                }
            ]
        )
    )
    result = run_playbook(str(playbook), inventory(object_store="ceph"), tmp_path)
    output = " ".join(result.stdout.split())
    assert result.returncode != 0
    assert "mlops_object_store" in output and "minio, seaweedfs" in output, output
