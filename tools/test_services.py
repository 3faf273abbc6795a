#!/usr/bin/env python3
"""Start the platform's real services on this machine for tests, and stop them.

PostgreSQL (Debian's), SeaweedFS (the `seaweedfs` role's own build, or MinIO
is not used here), an MLflow server with basic auth and proxied artifacts,
a Prefect server with an auth string, and a bare git repository for the
dataset metadata: all on loopback, on free ports, in a temporary folder.
Generated secrets are also written under $MLOPS_CACHE_DIR/credentials/
test-services, where `make test`'s secret scan looks for them in the output.

    tools/test_services.py start STATE_DIR     start, write STATE_DIR/services.json
    tools/test_services.py stop STATE_DIR      stop everything started there
    tools/test_services.py run -- CMD ...      start, run CMD with the worker's
                                               environment, stop

pytest uses it through the `services` fixture (conftest.py at the root).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MLOPS_CACHE_DIR", ROOT / ".cache"))
DEV_BIN = Path(os.environ.get("MLOPS_DEV_VENV", ROOT / ".venv-dev")) / "bin"
CONTROLLER_BIN = ROOT / ".venv" / "bin"
# The buckets, grants and work pool the roles deploy: read from the platform's
# contract (roles/mlops/defaults/main.yml), not copied.
CONTRACT = yaml.safe_load((ROOT / "roles" / "mlops" / "defaults" / "main.yml").read_text())
BUCKETS = CONTRACT["mlops_buckets"]
S3_GRANTS = CONTRACT["mlops_s3_grants"]
S3_ACTIONS = {
    "read_write": ("Read", "Write", "List", "Tagging"),
    "read": ("Read", "List"),
    "write": ("Write",),
}
WORK_POOL = CONTRACT["mlops_prefect_work_pools"][0]
# Database: owner (and the users that may connect), as the postgresql role creates them.
DATABASES = {"mlflow": "mlflow", "prefect": "prefect", "mlops": "mlops_owner"}
USERS = ("mlflow", "prefect", "mlops_owner", "mlops_web", "mlops_worker")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_weed_port() -> int:
    """SeaweedFS listens on port and port + 10000 (gRPC): both must be free and valid."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 45000)
        if port_is_free(port) and port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for SeaweedFS")


def token(length: int = 32) -> str:
    return secrets.token_urlsafe(length)[:length]


def mlflow_auth_ini(home: Path, cache_seconds: int = 60) -> Path:
    """MLflow's basic-auth configuration as the mlflow role writes it (admin `admin`,
    READ by default, successful logins trusted `cache_seconds`: mlflow_auth_cache_seconds)."""
    ini = home / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{home}/basic_auth.db\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_seconds}\n"
    )
    return ini


def wait_for(url: str, timeout: float, headers: dict | None = None, what: str = "") -> float:
    """Poll url until it answers 200; return the seconds it took."""
    started = time.monotonic()
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"only loopback services are polled, not {url}")
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (checked above)
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what or url} did not answer within {timeout:.0f} s")


@dataclass
class Services:
    state: Path
    processes: dict[str, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    # --- lifecycle ------------------------------------------------------
    def start(self) -> dict:
        self.state.mkdir(parents=True, exist_ok=True)
        timings = {}
        try:
            for name, step in (
                ("postgresql", self.start_postgresql),
                ("seaweedfs", self.start_seaweedfs),
                ("uploads_schema", self.migrate_uploads),
                ("data_repo", self.create_data_repo),
            ):
                started = time.monotonic()
                step()
                timings[name] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            self.launch_mlflow()
            self.launch_prefect()
            self.finish_mlflow()
            self.finish_prefect()
            timings["mlflow_and_prefect"] = round(time.monotonic() - started, 1)
        except BaseException:
            self.save()
            self.stop()
            raise
        self.info["startup_seconds"] = timings
        self.save()
        self.record_secrets()
        return self.info

    def stop(self) -> None:
        for name, pid in reversed(list(self.processes.items())):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                os.killpg(pid, signal.SIGKILL)
            print(f"test-services: stopped {name}", file=sys.stderr)
        pg = self.info.get("postgresql")
        if pg:
            self.as_postgres(
                [pg["bin"] + "/pg_ctl", "-D", pg["data"], "-m", "fast", "-w", "stop"], check=False
            )
        self.processes.clear()

    def save(self) -> None:
        (self.state / "services.json").write_text(
            json.dumps({"processes": self.processes, **self.info}, indent=2)
        )
        os.chmod(self.state / "services.json", 0o600)

    @classmethod
    def load(cls, state: Path) -> Services:
        data = json.loads((state / "services.json").read_text())
        processes = data.pop("processes", {})
        return cls(state=state, processes=processes, info=data)

    def spawn(
        self, name: str, argv: list[str], env: dict, cwd: Path | None = None
    ) -> subprocess.Popen:
        log = open(self.state / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
        self.processes[name] = process.pid
        return process

    def log_tail(self, name: str) -> str:
        path = self.state / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # --- PostgreSQL -----------------------------------------------------
    def as_postgres(
        self, argv: list[str], check: bool = True, **kwargs
    ) -> subprocess.CompletedProcess:
        """initdb and pg_ctl refuse to run as root: run them as the postgres user then."""
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True, **kwargs)

    def start_postgresql(self) -> None:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not candidates:
            raise RuntimeError(
                "Debian's PostgreSQL server is not installed (apt-get install postgresql)"
            )
        bin_dir = str(candidates[-1].parent)
        data = self.state / "pgdata"
        socket_dir = self.state / "pgsocket"
        socket_dir.mkdir(exist_ok=True)
        superuser_password = token()
        pwfile = self.state / "pg-superuser"
        pwfile.write_text(superuser_password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.state, "postgres")
            for path in (socket_dir, pwfile):
                shutil.chown(path, "postgres")
        port = free_port()
        self.as_postgres(
            [
                f"{bin_dir}/initdb",
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
            ]
        )
        pwfile.unlink()
        self.as_postgres(
            [
                f"{bin_dir}/pg_ctl",
                "-D",
                str(data),
                "-l",
                str(self.state / "postgresql.log"),
                "-w",
                "-o",
                f"-p {port} -c listen_addresses=127.0.0.1 -k {socket_dir}",
                "start",
            ]
        )
        passwords = {user: token() for user in USERS}
        self.info["postgresql"] = {
            "bin": bin_dir,
            "data": str(data),
            "port": port,
            "superuser_password": superuser_password,
            "passwords": passwords,
        }
        statements = [
            f"CREATE ROLE {user} LOGIN PASSWORD '{password}'"
            for user, password in passwords.items()
        ]
        statements += [f"CREATE DATABASE {db} OWNER {owner}" for db, owner in DATABASES.items()]
        self.psql("postgres", statements)
        self.psql("prefect", ["CREATE EXTENSION IF NOT EXISTS pg_trgm"])

    def psql(self, database: str, statements: list[str]) -> None:
        pg = self.info["postgresql"]
        for statement in statements:
            subprocess.run(
                [
                    "psql",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(pg["port"]),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                    "-q",
                    "-c",
                    statement,
                ],
                env={**os.environ, "PGPASSWORD": pg["superuser_password"]},
                check=True,
                capture_output=True,
            )

    def database_url(self, user: str, database: str, driver: str = "postgresql") -> str:
        pg = self.info["postgresql"]
        return f"{driver}://{user}:{pg['passwords'][user]}@127.0.0.1:{pg['port']}/{database}"

    # --- SeaweedFS -------------------------------------------------------
    def weed_binary(self) -> Path:
        """The seaweedfs role's own build (binary_install, method source), made once and cached."""
        target = CACHE / "bin" / "weed"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    str(CONTROLLER_BIN / "ansible-playbook"),
                    "-i",
                    str(ROOT / "tools" / "controller-inventory.yml"),
                    str(ROOT / "tools" / "fetch-weed.yml"),
                    "-e",
                    f"seaweedfs_binary_dest={target}",
                ],
                check=True,
                cwd=ROOT,
                env={**os.environ, "MLOPS_CACHE_DIR": str(CACHE)},
            )
        return target

    def start_seaweedfs(self) -> None:
        weed = self.weed_binary()
        data = self.state / "seaweedfs"
        data.mkdir(exist_ok=True)
        keys = {
            identity: {"access_key": token(20).upper(), "secret_key": token(40)}
            for identity in [*S3_GRANTS, "admin"]
        }
        # As the seaweedfs role writes them: an admin, and each service's grants.
        identities = [
            {
                "name": identity,
                "credentials": [{"accessKey": k["access_key"], "secretKey": k["secret_key"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]
                if identity == "admin"
                else [
                    f"{action}:{BUCKETS[purpose]}"
                    for level, actions in S3_ACTIONS.items()
                    for purpose in S3_GRANTS[identity].get(level, [])
                    for action in actions
                ],
            }
            for identity, k in keys.items()
        ]
        config = self.state / "s3.json"
        config.write_text(json.dumps({"identities": identities}))
        config.chmod(0o600)
        ports = {name: free_weed_port() for name in ("s3", "master", "volume", "filer")}
        self.spawn(
            "seaweedfs",
            [
                str(weed),
                "server",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}",
                "-volume.max=0",
                "-volume.preStopSeconds=0",
                "-master.volumeSizeLimitMB=256",
                "-filer",
                f"-filer.port={ports['filer']}",
                "-s3",
                f"-s3.port={ports['s3']}",
                f"-s3.config={config}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ],
            env={},
            cwd=data,
        )
        wait_for(f"http://127.0.0.1:{ports['s3']}/healthz", 60, what="SeaweedFS")
        commands = "\n".join(f"s3.bucket.create -name {bucket}" for bucket in BUCKETS.values())
        subprocess.run(
            [
                str(weed),
                "shell",
                f"-master=127.0.0.1:{ports['master']}",
                f"-filer=127.0.0.1:{ports['filer']}",
            ],
            input=commands,
            text=True,
            check=True,
            capture_output=True,
            cwd=data,
            timeout=60,
        )
        self.info["s3"] = {
            "endpoint": f"http://127.0.0.1:{ports['s3']}",
            "region": "us-east-1",
            "buckets": BUCKETS,
            "keys": keys,
        }

    def migrate_uploads(self) -> None:
        """The uploads table's migrations, as the database owner (as the serving role does)."""
        subprocess.run(
            [str(DEV_BIN / "mlops-uploads"), "migrate"],
            env={**os.environ, "MLOPS_DATABASE_URL": self.database_url("mlops_owner", "mlops")},
            check=True,
            capture_output=True,
        )

    # --- dataset metadata repository ------------------------------------
    def create_data_repo(self) -> None:
        repo = self.state / "data.git"
        subprocess.run(
            ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(repo)], check=True
        )
        self.info["data_repo_url"] = str(repo)

    # --- MLflow -----------------------------------------------------------
    def launch_mlflow(self) -> None:
        port = free_port()
        home = self.state / "mlflow"
        home.mkdir(exist_ok=True)
        admin_password = token()
        ini = mlflow_auth_ini(home)
        s3 = self.info["s3"]
        self.spawn(
            "mlflow",
            [
                str(DEV_BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--serve-artifacts",
                "--app-name",
                "basic-auth",
            ],
            env={
                "MLFLOW_BACKEND_STORE_URI": self.database_url(
                    "mlflow", "mlflow", "postgresql+psycopg2"
                ),
                "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKETS['mlflow']}",
                "MLFLOW_S3_ENDPOINT_URL": s3["endpoint"],
                "AWS_ACCESS_KEY_ID": s3["keys"]["mlflow"]["access_key"],
                "AWS_SECRET_ACCESS_KEY": s3["keys"]["mlflow"]["secret_key"],
                "AWS_DEFAULT_REGION": s3["region"],
                "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                # Job-execution consumers: the platform uses no MLflow server jobs.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": token(48),
            },
            cwd=home,
        )
        self.info["mlflow"] = {
            "url": f"http://127.0.0.1:{port}",
            "admin_password": admin_password,
            "users": {"worker": token(), "web": token()},
        }

    def finish_mlflow(self) -> None:
        mlflow = self.info["mlflow"]
        try:
            wait_for(f"{mlflow['url']}/health", 180, what="MLflow")
        except TimeoutError as error:
            raise RuntimeError(f"{error}\n{self.log_tail('mlflow')}") from None
        self.provision_mlflow(users=mlflow["users"], grants={"worker": "MANAGE", "web": "READ"})

    def provision_mlflow(self, **spec) -> None:
        """The mlflow role's own provisioning script (accounts, the mnist experiment and
        model, grants; `people` and `role_grants` as well), run as MLflow's admin."""
        mlflow = self.info["mlflow"]
        subprocess.run(
            [
                str(DEV_BIN / "python"),
                str(ROOT / "roles" / "mlflow" / "files" / "mlflow-provision.py"),
            ],
            input=json.dumps(
                {
                    "url": mlflow["url"],
                    "experiments": ["mnist"],
                    "registered_models": ["mnist"],
                    **spec,
                }
            ),
            env={
                **os.environ,
                "MLFLOW_TRACKING_USERNAME": "admin",
                "MLFLOW_TRACKING_PASSWORD": mlflow["admin_password"],
            },
            text=True,
            check=True,
            capture_output=True,
        )

    # --- Prefect ----------------------------------------------------------
    def launch_prefect(self) -> None:
        port = free_port()
        home = self.state / "prefect"
        home.mkdir(exist_ok=True)
        auth = f"admin:{token()}"
        self.spawn(
            "prefect",
            [
                str(DEV_BIN / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env={
                "PREFECT_HOME": str(home),
                "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url(
                    "prefect", "prefect", "postgresql+asyncpg"
                ),
                "PREFECT_SERVER_API_AUTH_STRING": auth,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "false",
            },
            cwd=home,
        )
        self.info["prefect"] = {
            "api_url": f"http://127.0.0.1:{port}/api",
            "auth_string": auth,
            "home": str(home),
        }

    def finish_prefect(self) -> None:
        prefect = self.info["prefect"]
        header = {"Authorization": "Basic " + b64encode(prefect["auth_string"].encode()).decode()}
        try:
            wait_for(f"{prefect['api_url']}/health", 180, headers=header, what="Prefect")
        except TimeoutError as error:
            raise RuntimeError(f"{error}\n{self.log_tail('prefect')}") from None
        subprocess.run(
            [str(DEV_BIN / "prefect"), "work-pool", "create", WORK_POOL, "--type", "process"],
            env={**os.environ, **self.client_env("worker")},
            check=True,
            capture_output=True,
        )

    # --- what clients get -------------------------------------------------
    def s3_admin(self) -> dict[str, str]:
        """The object store's admin keys (tests read what no service may read back)."""
        s3 = self.info["s3"]
        return {"endpoint": s3["endpoint"], "region": s3["region"], **s3["keys"]["admin"]}

    def owner_database_url(self) -> str:
        """The uploads database as its owner (what runs the migrations)."""
        return self.database_url("mlops_owner", "mlops")

    def client_env(self, identity: str = "worker") -> dict[str, str]:
        """The environment a worker (or the web app) runs with, as the roles write it."""
        s3 = self.info["s3"]
        mlflow = self.info["mlflow"]
        prefect = self.info["prefect"]
        db_user = {"worker": "mlops_worker", "web": "mlops_web"}[identity]
        return {
            "MLOPS_DATA_REPO_URL": self.info["data_repo_url"],
            "MLOPS_S3_ENDPOINT": s3["endpoint"],
            "MLOPS_DVC_BUCKET": BUCKETS["dvc"],
            "MLOPS_UPLOADS_BUCKET": BUCKETS["uploads"],
            "MLOPS_DATABASE_URL": self.database_url(db_user, "mlops"),
            "MLOPS_WORK_DIR": str(self.state / f"work-{identity}"),
            "AWS_ACCESS_KEY_ID": s3["keys"][identity]["access_key"],
            "AWS_SECRET_ACCESS_KEY": s3["keys"][identity]["secret_key"],
            "AWS_DEFAULT_REGION": s3["region"],
            "MLFLOW_TRACKING_URI": mlflow["url"],
            "MLFLOW_TRACKING_USERNAME": identity,
            "MLFLOW_TRACKING_PASSWORD": mlflow["users"][identity],
            "PREFECT_API_URL": prefect["api_url"],
            "PREFECT_API_AUTH_STRING": prefect["auth_string"],
            "PREFECT_HOME": str(self.state / f"prefect-client-{identity}"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def record_secrets(self) -> None:
        folder = CACHE / "credentials" / "test-services"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        values = [
            self.info["postgresql"]["superuser_password"],
            *self.info["postgresql"]["passwords"].values(),
        ]
        values += [k for keys in self.info["s3"]["keys"].values() for k in keys.values()]
        values += [self.info["mlflow"]["admin_password"], *self.info["mlflow"]["users"].values()]
        values.append(self.info["prefect"]["auth_string"].split(":", 1)[1])
        path = folder / f"{self.state.name}.secrets"
        path.write_text("\n".join(values) + "\n")
        path.chmod(0o600)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] in ("start", "stop"):
        state = Path(argv[1]).resolve()
        if argv[0] == "start":
            info = Services(state).start()
            print(json.dumps({"state": str(state), "startup_seconds": info["startup_seconds"]}))
        else:
            Services.load(state).stop()
        return 0
    if argv and argv[0] == "run":
        command = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
        state = Path(tempfile.mkdtemp(prefix="mlops-services-"))
        services = Services(state)
        services.start()
        try:
            return subprocess.run(
                command, env={**os.environ, **services.client_env()}, check=False
            ).returncode
        finally:
            services.stop()
            shutil.rmtree(state, ignore_errors=True)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
