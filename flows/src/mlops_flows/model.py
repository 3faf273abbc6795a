"""The digit classifier, and the contract of its input and output.

Input: float32 [N, 1, 28, 28], pixel values in 0..1, a white digit on black
(MNIST's convention; the web app's preprocessing produces exactly that).
Output: logits [N, 10]. Normalisation is inside the model, so the exported
ONNX graph and every client agree on the input without extra knowledge.
"""

from __future__ import annotations

import torch
from torch import nn

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DigitClassifier(nn.Module):
    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MNIST_MEAN))
        self.register_buffer("std", torch.tensor(MNIST_STD))
        self.features = nn.Sequential(conv_block(1, 32), conv_block(32, 64))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, 10),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((image - self.mean) / self.std))
