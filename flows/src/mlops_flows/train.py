"""Training, evaluation and ONNX export, free of Prefect and MLflow.

The flows (flows.py) and the benchmark script both call these functions.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from .config import Hyperparameters
from .model import INPUT_NAME, OUTPUT_NAME, DigitClassifier


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    images_per_second: float


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    recall: list[float]  # per digit
    confusion: np.ndarray  # rows: true digit, columns: predicted digit
    predictions: np.ndarray = field(repr=False)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch sees no CUDA device on this host")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    return torch.device(requested)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in 0..1 (the model's input contract)."""
    return torch.from_numpy(images).unsqueeze(1).float().div_(255.0)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light, seeded augmentation: each image of the batch shifted (up to 10 %), turned (up to
    10 degrees) and scaled (0.9 to 1.1) on its own, in one sampling pass over the whole batch.
    (Per image, torchvision's RandomAffine in the loader took most of a CPU epoch.)"""
    n = batch.shape[0]

    def uniform(*shape: int) -> torch.Tensor:  # in -1..1, from the seeded generator
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle = uniform(n) * math.radians(10)
    scale = 1 + uniform(n) * 0.1
    shift = uniform(n, 2) * 0.2  # 10 % of the width: the grid runs from -1 to 1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(batch.device)
    grid = nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    return nn.functional.grid_sample(batch, grid, align_corners=False)


def split_validation(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation samples, the same share of every digit in each."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for digit in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == digit))
        n_val = round(len(indices) * share)
        val.extend(indices[:n_val])
        train.extend(indices[n_val:])
    return np.array(sorted(train)), np.array(sorted(val))


def train_model(
    images: np.ndarray,
    labels: np.ndarray,
    hp: Hyperparameters,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> tuple[DigitClassifier, list[EpochResult]]:
    """Train on uint8 [N, 28, 28] images; return the model (eval mode) and per-epoch results."""
    generator = seed_everything(hp.seed)
    device = pick_device(hp.device)
    model = DigitClassifier().to(device)
    train_idx, val_idx = split_validation(labels, hp.validation_share, hp.seed)
    # The training images stay on the device, as one tensor: batches are slices of it.
    train_images = to_tensor(images[train_idx]).to(device)
    train_labels = torch.from_numpy(labels[train_idx]).to(device)
    val_images, val_labels = images[val_idx], labels[val_idx]
    batches = math.ceil(len(train_idx) / hp.batch_size)
    history: list[EpochResult] = []
    if hp.epochs == 0:
        return model.eval(), history
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=hp.learning_rate, total_steps=hp.epochs * batches
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, hp.epochs + 1):
        model.train()
        started = time.perf_counter()
        # Sums stay on the device: reading them per batch would wait for the GPU each time.
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        order = torch.randperm(len(train_labels), generator=generator).to(device)
        for start in range(0, len(order), hp.batch_size):
            picked = order[start : start + hp.batch_size]
            batch, targets = augment(train_images[picked], generator), train_labels[picked]
            optimizer.zero_grad(set_to_none=True)
            logits = model(batch)
            loss = loss_fn(logits, targets)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.detach() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            seen += len(targets)
        total_loss, correct = total_loss.item(), correct.item()
        seconds = time.perf_counter() - started
        val_logits = predict(model, val_images, device)
        val_loss = float(loss_fn(torch.from_numpy(val_logits), torch.from_numpy(val_labels)).item())
        result = EpochResult(
            epoch=epoch,
            train_loss=total_loss / seen,
            train_accuracy=correct / seen,
            val_loss=val_loss,
            val_accuracy=float((val_logits.argmax(1) == val_labels).mean()),
            seconds=seconds,
            images_per_second=seen / seconds,
        )
        history.append(result)
        if on_epoch:
            on_epoch(result)
    return model.eval(), history


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, device: torch.device | None = None, batch: int = 512
) -> np.ndarray:
    """Logits for uint8 images, in eval mode (no augmentation, no dropout)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = [
        model(to_tensor(images[start : start + batch]).to(device)).cpu()
        for start in range(0, len(images), batch)
    ]
    model.train(was_training)
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 10), np.float32)


def evaluate(logits: np.ndarray, labels: np.ndarray) -> Evaluation:
    predictions = logits.argmax(1)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_digit = confusion.sum(1)
    recall = [
        float(confusion[d, d] / per_digit[d]) if per_digit[d] else math.nan for d in range(10)
    ]
    return Evaluation(
        accuracy=float((predictions == labels).mean()),
        recall=recall,
        confusion=confusion,
        predictions=predictions,
    )


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Export the same weights to ONNX with a dynamic batch dimension."""
    model = model.cpu().eval()
    example = torch.zeros(2, 1, 28, 28)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
        dynamo=True,
        external_data=False,
    )
    return path


def onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: to_tensor(images).numpy()})[0]


def confusion_matrix_png(confusion: np.ndarray, path: Path, title: str) -> Path:
    """A small heat map of the confusion matrix, drawn with Pillow."""
    cell, margin = 44, 60
    size = margin + 10 * cell + 10
    canvas = Image.new("RGB", (size, size + 30), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, 8), title, fill="black")
    draw.text((margin, 24), "predicted digit ->", fill="black")
    draw.text((4, margin - 14), "true", fill="black")
    peak = max(int(confusion.max()), 1)
    for d in range(10):
        draw.text((margin + d * cell + cell // 2 - 3, margin - 14), str(d), fill="black")
        draw.text((margin - 14, margin + d * cell + cell // 2 - 6), str(d), fill="black")
    for true in range(10):
        for predicted in range(10):
            count = int(confusion[true, predicted])
            shade = 255 - int(215 * count / peak)
            colour = (shade, shade, 255) if true == predicted else (255, shade, shade)
            x, y = margin + predicted * cell, margin + true * cell
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour, outline="#cccccc")
            if count:
                draw.text((x + 6, y + cell // 2 - 6), str(count), fill="black")
    canvas.save(path)
    return path
