"""The secret scan that ends `make test` must catch a leaked secret."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNER = ROOT / "tools" / "scan-secrets"


def run_scan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCANNER), *args], capture_output=True, text=True, check=False
    )


def make_secrets(tmp_path: Path) -> Path:
    secrets = tmp_path / "credentials" / "postgresql"
    secrets.mkdir(parents=True)
    (secrets / "mlflow").write_text("Zq8vN3kPq1LmX7rT2bYw\n")
    return tmp_path / "credentials"


def test_a_log_holding_a_secret_fails_without_echoing_it(tmp_path):
    secrets_dir = make_secrets(tmp_path)
    log = tmp_path / "make-test.log"
    log.write_text("ok line\nPGPASSWORD=Zq8vN3kPq1LmX7rT2bYw psql ...\n")
    result = run_scan("--secrets-dir", str(secrets_dir), str(log))
    assert result.returncode == 1
    assert f"{log}:2:" in result.stderr
    assert "Zq8vN3kPq1LmX7rT2bYw" not in result.stdout + result.stderr


def test_a_clean_log_passes(tmp_path):
    secrets_dir = make_secrets(tmp_path)
    log = tmp_path / "make-test.log"
    log.write_text("TASK [Create the service users] ok: (censored due to no_log)\n")
    result = run_scan("--secrets-dir", str(secrets_dir), str(log))
    assert result.returncode == 0, result.stderr
    assert "1 secrets checked" in result.stdout


def test_finding_no_secrets_fails_when_some_are_required(tmp_path):
    log = tmp_path / "make-test.log"
    log.write_text("anything\n")
    empty = tmp_path / "nothing-here"
    result = run_scan("--secrets-dir", str(empty), "--min-secrets", "1", str(log))
    assert result.returncode == 2
