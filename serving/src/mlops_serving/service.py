"""What every prediction does, for the pages and the API alike."""

from __future__ import annotations

import logging
import multiprocessing
import random
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from mlops_uploads import web as uploads

from .context import state
from .outbox import content_key
from .preprocess import MIME, ImageRejected, prepare

log = logging.getLogger(__name__)
# A prediction slower than this is logged with where its time went.
SLOW_PREDICTION_SECONDS = 1.0


class NoModel(RuntimeError):
    """No model version holds the alias yet (or none could be loaded)."""


class Busy(RuntimeError):
    """The app cannot take this prediction now; try again after retry_after seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Prediction:
    upload_id: str  # the public id
    digit: int
    probabilities: list[float]
    model_version: str
    data_version: str
    feedback_token: str  # only the uploader gets it: feedback needs it

    def top(self, n: int = 3) -> list[tuple[int, float]]:
        return top(self.probabilities, n)

    def as_json(self) -> dict:
        return {
            "upload_id": self.upload_id,
            "digit": self.digit,
            "probabilities": [round(p, 6) for p in self.probabilities],
            "model_version": self.model_version,
            "data_version": self.data_version,
            "feedback_token": self.feedback_token,
        }


def top(probabilities: list[float], n: int = 3) -> list[tuple[int, float]]:
    """The n likeliest digits with their probabilities, likeliest first."""
    return sorted(enumerate(probabilities), key=lambda pair: pair[1], reverse=True)[:n]


class DecodeGate:
    """Costly decodes (pixel bombs and big photos) one at a time per host, the rest at once.

    `slots` is a semaphore shared by the web app's processes (server.py makes it
    before forking; a lone process makes its own). A request waits at most
    `wait_seconds` for a slot, then gets 503 with Retry-After: an attacker
    sending huge images gets one core at most, and normal uploads keep theirs.
    """

    def __init__(self, costly_pixels: int, wait_seconds: float, slots=None):
        self.costly_pixels = costly_pixels
        self.wait_seconds = wait_seconds
        self.slots = slots if slots is not None else threading.BoundedSemaphore(1)

    @contextmanager
    def __call__(self, decode_pixels: int):
        if decode_pixels <= self.costly_pixels:
            yield
            return
        if not self.slots.acquire(timeout=self.wait_seconds):
            raise ImageRejected("busy decoding large images; try again shortly", 503, 2)
        try:
            yield
        finally:
            self.slots.release()


def shared_decode_slots(count: int = 1):
    """A semaphore that forked processes share (make it before forking)."""
    return multiprocessing.BoundedSemaphore(count)


def shadow_prediction(holder, production, batch, share: float = 1.0) -> tuple[str, int] | None:
    """(version, digit) of the candidate shadowing production, when one is loaded (for a
    random `share` of the predictions).

    The candidate never decides an answer, so its failure must not fail one: it
    is logged and the row is stored without a shadow digit.
    """
    candidate = holder.current if holder is not None else None
    if candidate is None or candidate.version == production.version:
        return None
    if share < 1.0 and random.random() >= share:  # noqa: S311 (a sample, not a secret)
        return None
    try:
        return candidate.version, int(candidate.probabilities(batch)[0].argmax())
    except Exception:
        log.exception(
            "the shadow model (version %s) failed; answered without it", candidate.version
        )
        return None


def predict_and_store(data: bytes) -> Prediction:
    """Preprocess, predict with the live model, commit the row and the original.

    The original reaches the uploads bucket shortly after (outbox.UploadShipper).
    Nothing is stored when the image is rejected, no model is loaded or the
    outbox is full.
    """
    app = state()
    model = app.models.current  # this request keeps this model, whatever a reload does
    if model is None:
        raise NoModel("no production model is loaded yet")
    marks = [("start", time.monotonic())]
    if app.shipper.full():
        raise Busy("too many uploads wait for the object store; try again later", 30)
    marks.append(("outbox size", time.monotonic()))
    prepared = prepare(data, max_pixels=app.config.max_pixels, gate=app.decode_gate)
    marks.append(("decode", time.monotonic()))
    batch = prepared.model_input()
    probabilities = [float(p) for p in model.probabilities(batch)[0]]
    marks.append(("model", time.monotonic()))
    shadow = shadow_prediction(app.shadow, model, batch, app.config.shadow_share)
    marks.append(("shadow model", time.monotonic()))
    digit = max(range(len(probabilities)), key=probabilities.__getitem__)
    sha, key = content_key(data, prepared.extension)
    token = secrets.token_urlsafe(24)
    with app.pool.connection() as conn:
        public_id = uploads.insert(
            conn,
            key=key,
            sha256=sha,
            content_type=MIME[prepared.extension],
            original=data,
            model_input=prepared.png(),
            predicted_label=digit,
            probabilities=probabilities,
            model_version=model.version,
            feedback_token=token,
            shadow=shadow,
        )
    marks.append(("insert", time.monotonic()))
    app.shipper.queued()
    app.shipper.help_when_overdue()
    marks.append(("helping the shipper", time.monotonic()))
    app.metrics.predictions.labels(digit=str(digit), model_version=model.version).inc()
    if shadow is not None:
        app.metrics.count_shadow(shadow[0], shadow[1] == digit)
    if marks[-1][1] - marks[0][1] > SLOW_PREDICTION_SECONDS:
        log.warning(
            "slow prediction: %s",
            ", ".join(
                f"{name} {(t - marks[i][1]) * 1000:.0f} ms" for i, (name, t) in enumerate(marks[1:])
            ),
        )
    return Prediction(public_id, digit, probabilities, model.version, model.data_version, token)


__all__ = ["Busy", "ImageRejected", "NoModel", "Prediction", "predict_and_store", "top"]
