"""Benchmark (not a test): a retrain's data steps with and without the host's shared DVC cache.

On a worker, a retrain fetches the newest version to build on, publishes the
next one with the uploads added, and fetches that one to train on. Each step
runs here twice, side by side in one sitting: with every workspace on its own
DVC cache (as before), and with one cache per host (as now). Needs the
services and a published version:

    tools/test_services.py run -- .venv-dev/bin/python flows/benchmarks/data_cache_benchmark.py
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlops_flows.config import Settings
from mlops_flows.datarepo import DataRepo
from PIL import Image

NEW_IMAGES = 50


def timed(seconds: dict, name: str, step):
    started = time.monotonic()
    result = step()
    seconds[name] = time.monotonic() - started
    return result


def add_images(seed: int):
    """A build for publish(): the base version plus NEW_IMAGES new images, like retrain."""

    def build(target: Path, base: Path | None) -> None:
        shutil.copytree(base, target)
        rng = np.random.default_rng(seed)
        for index in range(NEW_IMAGES):
            pixels = (rng.random((28, 28)) * 255).astype(np.uint8)
            folder = target / "train" / str(index % 10)
            Image.fromarray(pixels, mode="L").save(folder / f"bench-{seed}-{index}.png")

    return build


def retrain_steps(settings: Settings, shared: bool, seed: int) -> dict[str, float]:
    """The three data steps; each on a fresh host work folder unless the cache is shared."""
    host = Path(tempfile.mkdtemp(prefix="bench-host-"))

    def repo() -> DataRepo:
        work = host if shared else Path(tempfile.mkdtemp(prefix="run-", dir=host))
        return DataRepo(dataclasses.replace(settings, work_dir=work))

    seconds: dict[str, float] = {}
    latest = repo().latest()
    timed(seconds, f"fetch {latest}", lambda: repo().fetch(latest, host / "base"))
    published = timed(seconds, "publish +50 images", lambda: repo().publish(add_images(seed)))
    timed(
        seconds, f"fetch the new {published.tag}", lambda: repo().fetch(published.tag, host / "new")
    )
    shutil.rmtree(host)
    return seconds


def main() -> int:
    settings = Settings.from_env()
    if not DataRepo(settings).versions():
        bin_dir = Path(sys.executable).parent
        subprocess.run([str(bin_dir / "mlops-flows"), "data", "bootstrap"], check=True)
    seed = int(time.time())
    own = retrain_steps(settings, shared=False, seed=seed)
    shared = retrain_steps(settings, shared=True, seed=seed + 1)
    print(f"{'step':32} {'own cache':>10} {'shared':>10} {'ratio':>7}")
    for (name, before), after in zip(own.items(), shared.values(), strict=True):
        print(f"{name:32} {before:9.1f}s {after:9.1f}s {before / after:6.1f}x")
    before, after = sum(own.values()), sum(shared.values())
    print(f"{'all three':32} {before:9.1f}s {after:9.1f}s {before / after:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
