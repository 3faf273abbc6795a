"""What every prediction does, for the pages and the API alike."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from . import uploads
from .preprocess import MIME, ImageRejected, prepare
from .storage import content_key


class NoModel(RuntimeError):
    """No model version holds the alias yet (or none could be loaded)."""


@dataclass(frozen=True)
class Prediction:
    upload_id: int
    digit: int
    probabilities: list[float]
    model_version: str
    data_version: str

    def top(self, n: int = 3) -> list[tuple[int, float]]:
        ranked = sorted(enumerate(self.probabilities), key=lambda pair: pair[1], reverse=True)
        return ranked[:n]

    def as_json(self) -> dict:
        return {
            "upload_id": self.upload_id,
            "digit": self.digit,
            "probabilities": [round(p, 6) for p in self.probabilities],
            "model_version": self.model_version,
            "data_version": self.data_version,
        }


def predict_and_store(data: bytes) -> Prediction:
    """Preprocess, predict with the live model, commit the row and the original.

    The original reaches the uploads bucket shortly after (storage.UploadShipper).
    Nothing is stored when the image is rejected or no model is loaded.
    """
    state = current_app.extensions["mlops"]
    model = state.models.current  # this request keeps this model, whatever a reload does
    if model is None:
        raise NoModel("no production model is loaded yet")
    prepared = prepare(data, max_pixels=state.config.max_pixels)
    probabilities = [float(p) for p in model.probabilities(prepared.model_input())[0]]
    digit = max(range(len(probabilities)), key=probabilities.__getitem__)
    sha, key = content_key(data, prepared.extension)
    with state.pool.connection() as conn:
        upload_id = uploads.insert(
            conn,
            key=key,
            sha256=sha,
            content_type=MIME[prepared.extension],
            original=data,
            model_input=prepared.png(),
            predicted_label=digit,
            probabilities=probabilities,
            model_version=model.version,
        )
    state.shipper.queued()
    state.shipper.help_when_overdue()
    state.metrics.predictions.labels(digit=str(digit)).inc()
    return Prediction(upload_id, digit, probabilities, model.version, model.data_version)


__all__ = ["ImageRejected", "NoModel", "Prediction", "predict_and_store"]
