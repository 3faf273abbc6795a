"""Dataset versions: DVC-tracked data in the object store, git tags in a metadata repository.

The metadata repository (a bare git repository, on the server host over SSH in
a deployment, a local path in tests) holds `mnist.dvc` and the DVC config;
the images live in the DVC bucket. Each version is a git tag `data-vN`,
immutable and fetchable by name from any worker.

Publishing is safe to repeat and to race: content identical to an existing
version is not published again, and the branch and the new tag are pushed
atomically, so of two runs creating `data-vN` at once exactly one succeeds;
the other starts over on top of it (`data-vN+1`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import Settings
from .dataset import USERS_TEST, class_counts

TAG_PATTERN = re.compile(r"^data-v(\d+)$")
DATA_DIR = "mnist"
REMOTE = "storage"
BRANCH = "main"
PUBLISH_ATTEMPTS = 3
# Parallel transfers: a version is thousands of small files.
TRANSFER_JOBS = "32"
GIT_IDENTITY = ["-c", "user.name=mlops-flows", "-c", "user.email=mlops-flows@localhost"]

log = logging.getLogger(__name__)


class DataRepoError(RuntimeError):
    """A dataset version cannot be fetched or published."""


@dataclass(frozen=True)
class DataVersion:
    tag: str
    path: Path  # folder with train/ and test/
    dvc_md5: str  # DVC's hash of the whole folder
    train_counts: dict[int, int]
    test_counts: dict[int, int]  # MNIST's test set
    users_test_counts: dict[int, int]  # the held-out uploads (dataset.USERS_TEST)


@dataclass(frozen=True)
class Published:
    tag: str
    dvc_md5: str
    created: bool  # False: identical content was already published under `tag`


def tag_number(tag: str) -> int:
    match = TAG_PATTERN.match(tag)
    if not match:
        raise DataRepoError(f"'{tag}' is not a dataset version tag (data-v<N>)")
    return int(match.group(1))


def run(argv: list[str], cwd: Path | None = None) -> str:
    """Run git or dvc; raise with their own error message."""
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataRepoError(
            f"{' '.join(argv[:3])} failed: {(result.stderr or result.stdout).strip()}"
        )
    return result.stdout


def dvc_binary() -> str:
    """The dvc next to this interpreter (a venv's bin), else the one on PATH."""
    candidate = Path(sys.executable).parent / "dvc"
    return str(candidate) if candidate.exists() else "dvc"


class DataRepo:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = settings.data_repo_url
        self.dvc = dvc_binary()

    # --- reading -------------------------------------------------------
    def versions(self) -> list[str]:
        """Published version tags, oldest first."""
        out = run(["git", "ls-remote", "--tags", "--refs", self.url, "data-v*"])
        tags = [line.split("refs/tags/", 1)[1] for line in out.splitlines() if "refs/tags/" in line]
        return sorted((t for t in tags if TAG_PATTERN.match(t)), key=tag_number)

    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def fetch(self, tag: str, dest: Path) -> DataVersion:
        """Clone the metadata at `tag` into dest and pull its data from the DVC remote."""
        tag_number(tag)
        if tag not in self.versions():
            raise DataRepoError(f"dataset version {tag} does not exist in {self.url}")
        shutil.rmtree(dest, ignore_errors=True)
        run(["git", "clone", "--quiet", "--depth", "1", "--branch", tag, self.url, str(dest)])
        self._configure_workspace(dest)
        run([self.dvc, "pull", "--quiet", "--jobs", TRANSFER_JOBS, "--remote", REMOTE], cwd=dest)
        return self._describe(dest, tag)

    def fetch_cached(self, tag: str, cache_root: Path) -> DataVersion:
        """fetch(), kept under cache_root/<tag>: versions are immutable, so a copy stays valid.

        The cache keeps the newest `settings.data_cache_versions` versions (and this one).
        """
        folder = cache_root / tag
        cache_root.mkdir(parents=True, exist_ok=True)
        with open(cache_root / f".{tag}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs on one host fetch it once
            done = folder / ".fetched"
            if done.exists():
                version = self._describe(folder, tag)
                if done.read_text().strip() == version.dvc_md5:
                    return version
            version = self.fetch(tag, folder)
            done.write_text(version.dvc_md5 + "\n")
        self._prune_cache(cache_root, keep=tag)
        return version

    def _prune_cache(self, cache_root: Path, keep: str) -> None:
        """Drop cached versions beyond the newest few; one another run holds is left alone."""
        cached = sorted(
            (
                path
                for path in cache_root.iterdir()
                if path.is_dir() and TAG_PATTERN.match(path.name)
            ),
            key=lambda path: tag_number(path.name),
        )
        for old in cached[: -self.settings.data_cache_versions]:
            if old.name == keep:
                continue
            with open(cache_root / f".{old.name}.lock", "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being fetched or read right now
                shutil.rmtree(old, ignore_errors=True)
                log.info("dropped the cached copy of %s", old.name)

    # --- publishing ----------------------------------------------------
    def publish(
        self,
        build: Callable[[Path, Path | None], None],
        tag: str | None = None,
        needs_base: bool = True,
    ) -> Published:
        """Publish a new version.

        build(target, base) fills target (train/, test/) given the folder of the
        newest published version (None when there is none, or when needs_base is
        False: its data is then not downloaded); it is called again when another
        run published first. tag pins the version name (data-v1 when
        bootstrapping); by default it is the next number.
        """
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            with tempfile.TemporaryDirectory(prefix="mlops-data-") as scratch:
                workspace = Path(scratch) / "repo"
                latest = self._checkout_latest(workspace, pull=needs_base)
                base = workspace / DATA_DIR if latest and needs_base else None
                staged = Path(scratch) / "staged"
                build(staged, base)
                new_tag = tag or f"data-v{tag_number(latest) + 1 if latest else 1}"
                outcome = self._commit_and_push(
                    workspace, staged, new_tag, latest, pinned=bool(tag)
                )
                if outcome is not None:
                    return outcome
            log.warning("another run published meanwhile; starting over (attempt %d)", attempt)
        raise DataRepoError(
            f"could not publish after {PUBLISH_ATTEMPTS} attempts: others kept publishing"
        )

    def _checkout_latest(self, workspace: Path, pull: bool) -> str | None:
        run(["git", "clone", "--quiet", self.url, str(workspace)])
        latest = self.latest()
        if latest is None:
            if not (workspace / ".dvc").exists():
                run([self.dvc, "init", "--quiet"], cwd=workspace)
                run(["git", "checkout", "--quiet", "-B", BRANCH], cwd=workspace)
                run(
                    [
                        self.dvc,
                        "remote",
                        "add",
                        "--default",
                        REMOTE,
                        f"s3://{self.settings.dvc_bucket}/{DATA_DIR}",
                    ],
                    cwd=workspace,
                )
            self._configure_workspace(workspace)
            return None
        run(["git", "checkout", "--quiet", "-B", BRANCH, latest], cwd=workspace)
        self._configure_workspace(workspace)
        if pull:
            run(
                [self.dvc, "pull", "--quiet", "--jobs", TRANSFER_JOBS, "--remote", REMOTE],
                cwd=workspace,
            )
        return latest

    def _commit_and_push(
        self, workspace: Path, staged: Path, tag: str, latest: str | None, pinned: bool
    ) -> Published | None:
        data = workspace / DATA_DIR
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(staged, data)
        run([self.dvc, "add", "--quiet", DATA_DIR], cwd=workspace)
        md5 = self._md5(workspace)
        existing = self.versions()
        if pinned and tag in existing:
            if md5 == self._md5_of_tag(tag):
                return Published(tag, md5, created=False)
            raise DataRepoError(f"{tag} already exists with other content; versions are immutable")
        if not pinned and latest is not None and md5 == self._md5_of_tag(latest):
            log.info("this content is already published as %s", latest)
            return Published(latest, md5, created=False)
        if tag in existing:
            return None  # another run published this number meanwhile
        run(
            [self.dvc, "push", "--quiet", "--jobs", TRANSFER_JOBS, "--remote", REMOTE],
            cwd=workspace,
        )
        run(["git", "add", "--all"], cwd=workspace)
        run(["git", *GIT_IDENTITY, "commit", "--quiet", "-m", f"Dataset {tag}"], cwd=workspace)
        run(
            ["git", *GIT_IDENTITY, "tag", "-a", tag, "-m", f"Dataset {tag} (dvc md5 {md5})"],
            cwd=workspace,
        )
        pushed = subprocess.run(
            [
                "git",
                "push",
                "--quiet",
                "--atomic",
                "origin",
                f"HEAD:refs/heads/{BRANCH}",
                f"refs/tags/{tag}",
            ],
            cwd=workspace,
            capture_output=True,
            text=True,
            check=False,
        )
        if pushed.returncode == 0:
            return Published(tag, md5, created=True)
        if "rejected" in pushed.stderr or "already exists" in pushed.stderr:
            return None  # another run won; the caller starts over
        raise DataRepoError(f"git push failed: {pushed.stderr.strip()}")

    # --- helpers -------------------------------------------------------
    def _configure_workspace(self, workspace: Path) -> None:
        """Deployment-specific settings go to .dvc/config.local (not committed).

        Every workspace on a host shares one DVC cache: a version fetched or
        published once is never downloaded again (a retrain publishes data-vN+1
        on top of data-vN and then trains on it; each was thousands of GETs).
        """
        region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        options = {"endpointurl": self.settings.s3_endpoint, "region": region}
        if os.environ.get("AWS_CA_BUNDLE"):  # the edge's private CA, on a laptop
            options["ssl_verify"] = os.environ["AWS_CA_BUNDLE"]
        cache = self.settings.work_dir / "dvc-cache"
        cache.mkdir(parents=True, exist_ok=True)
        # The file `dvc remote modify --local` and `dvc config --local` write, at once:
        # each dvc command costs a second or more of imports, four per workspace.
        sections = {"cache": {"dir": str(cache)}, f"'remote \"{REMOTE}\"'": options}
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            for option, value in values.items():
                if any(c in value for c in "\n\r\"'#"):
                    raise DataRepoError(f"{option} {value!r}: quotes, # and newlines not allowed")
                lines.append(f"    {option} = {value}")
        (workspace / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")

    def _md5(self, workspace: Path) -> str:
        meta = yaml.safe_load((workspace / f"{DATA_DIR}.dvc").read_text())
        return meta["outs"][0]["md5"]

    def _md5_of_tag(self, tag: str) -> str:
        with tempfile.TemporaryDirectory(prefix="mlops-tag-") as scratch:
            run(["git", "clone", "--quiet", "--depth", "1", "--branch", tag, self.url, scratch])
            return self._md5(Path(scratch))

    def _describe(self, workspace: Path, tag: str) -> DataVersion:
        data = workspace / DATA_DIR
        return DataVersion(
            tag=tag,
            path=data,
            dvc_md5=self._md5(workspace),
            train_counts=class_counts(data, "train"),
            test_counts=class_counts(data, "test"),
            users_test_counts=class_counts(data, USERS_TEST),
        )
