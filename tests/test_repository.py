"""Repository contracts a newcomer relies on."""

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_test_command_the_readme_shows():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)


def test_requirements_yml_pins_the_collections_the_venv_carries():
    import ansible_collections

    bundled = Path(ansible_collections.__path__[0])
    pins = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
    assert pins, "requirements.yml pins no collection"
    for pin in pins:
        namespace, name = pin["name"].split(".")
        manifest = json.loads((bundled / namespace / name / "MANIFEST.json").read_text())
        assert manifest["collection_info"]["version"] == pin["version"], pin["name"]


def test_requirements_yml_pins_exactly_the_collections_the_yaml_uses():
    used = set()
    for folder in ("roles", "playbooks", "molecule"):
        for path in (ROOT / folder).rglob("*.yml"):
            used |= set(
                re.findall(r"^\s*-?\s*([a-z_]+\.[a-z_]+)\.[a-z_]+:", path.read_text(), re.M)
            )
    used |= {"community.docker"}  # the demo's and the scenarios' connection plugin
    used -= {"ansible.builtin"}
    pins = {
        pin["name"]
        for pin in yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
    }
    assert pins == used, f"pinned, not used: {pins - used}; used, not pinned: {used - pins}"


# Roles without a host of their own to converge, and where their behaviour is tested.
TESTED_ELSEWHERE = {
    "mlops": "tests/test_inventory_validation.py",
    "python_app": "molecule/cluster/molecule.yml",
    "mlflow": "molecule/cluster/molecule.yml",
    "prefect_server": "molecule/cluster/molecule.yml",
    "data_repo": "molecule/cluster/molecule.yml",
    "prefect_worker": "molecule/cluster/molecule.yml",
    "service": "roles/seaweedfs/molecule/default/molecule.yml",
    "backup": "molecule/cluster/verify_operations.yml",
    "monitoring": "molecule/cluster/verify_operations.yml",
    "monitoring_agent": "molecule/cluster/verify_operations.yml",
    "serving": "molecule/cluster/molecule.yml",
}


def test_every_role_has_argument_specs_defaults_readme_and_a_scenario():
    roles = [p for p in (ROOT / "roles").iterdir() if p.is_dir()]
    assert roles
    for role in roles:
        required = ["meta/argument_specs.yml", "defaults/main.yml", "README.md"]
        if role.name in TESTED_ELSEWHERE:
            assert (ROOT / TESTED_ELSEWHERE[role.name]).is_file()
        else:
            required.append("molecule/default/molecule.yml")
        for path in required:
            assert (role / path).is_file(), f"{role.name} lacks {path}"


def test_every_default_is_documented_in_the_argument_specs_and_readme():
    for role in (ROOT / "roles").iterdir():
        if not role.is_dir():
            continue
        defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
        options = specs["argument_specs"]["main"]["options"]
        readme = (role / "README.md").read_text()
        for variable in defaults:
            assert variable in options, f"{role.name}: {variable} missing from argument_specs"
            assert f"`{variable}`" in readme, f"{role.name}: {variable} missing from README"


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if match:
            found[re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-")] = match.group(2)
    return found


def test_every_lock_agrees_on_the_versions_of_shared_packages():
    locks = [
        ROOT / "requirements" / "controller.txt",
        ROOT / "requirements" / "dev.txt",
        ROOT / "flows" / "requirements.txt",
        ROOT / "serving" / "requirements.txt",
        *sorted((ROOT / "roles").glob("*/files/requirements.txt")),
    ]
    platform = pins(ROOT / "requirements" / "platform.txt")
    assert {"prefect", "mlflow-skinny", "boto3", "torch"} <= set(platform)
    for lock in locks:
        for package, version in pins(lock).items():
            assert platform.get(package) == version, (
                f"{lock}: {package}=={version}, platform has {platform.get(package)}"
            )


def test_the_workers_install_the_torch_the_flows_are_locked_with():
    """One definition: the workers install flows/requirements-torch.in, pinned like the locks."""
    wanted = [
        line.strip()
        for line in (ROOT / "flows" / "requirements-torch.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    defaults = yaml.safe_load(
        (ROOT / "roles" / "prefect_worker" / "defaults" / "main.yml").read_text()
    )
    role = ROOT / "roles" / "prefect_worker"
    assert (role / defaults["prefect_worker_torch_requirements"]).resolve() == (
        ROOT / "flows" / "requirements-torch.in"
    )
    platform = pins(ROOT / "requirements" / "platform.txt")
    flows = (ROOT / "flows" / "pyproject.toml").read_text()
    for requirement in wanted:
        name, version = requirement.split("==")
        assert platform[name] == version
        assert f'"{requirement}"' in flows, f"flows/pyproject.toml does not pin {requirement}"


def test_the_server_roles_take_their_versions_from_their_locks():
    """mlflow_version and prefect_server_version are read from the locks, never written twice."""
    for role, package in (("mlflow", "mlflow"), ("prefect_server", "prefect")):
        folder = ROOT / "roles" / role
        defaults = yaml.safe_load((folder / "defaults" / "main.yml").read_text())
        assert f"{role}_version" not in defaults, f"{role}: a version beside its lock"
        derived = (folder / "vars" / "main.yml").read_text()
        assert f"{role}_version:" in derived and f"{role}_requirements" in derived
        lock = folder / defaults[f"{role}_requirements"]
        assert pins(lock)[package], f"{lock} pins no {package}"


def test_the_web_app_looks_for_the_onnx_file_where_the_flows_put_it():
    pattern = re.compile(r'^ONNX_IN_MODEL = "([^"]+)"$', re.MULTILINE)
    places = [
        ROOT / "flows" / "src" / "mlops_flows" / "tracking.py",
        ROOT / "serving" / "src" / "mlops_serving" / "model.py",
    ]
    paths = {place.name: pattern.findall(place.read_text()) for place in places}
    assert all(len(found) == 1 for found in paths.values()), paths
    assert paths["tracking.py"] == paths["model.py"], paths
