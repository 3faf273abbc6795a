"""Generated images and byte strings through /api/v1/predict (Hypothesis).

Images of 1 to 4000 px a side, in modes L, RGB, RGBA, P, I;16 and CMYK, as
PNG, JPEG, WebP, BMP and GIF, with shapes that touch the edges, noise, and
truncated files; and random bytes. Every answer must be 200 or a 4xx with a
JSON error: never a 5xx. Nothing may be stored for a 4xx.
MLOPS_FUZZ_EXAMPLES sets how many (10,000 by default).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from test_api import stored
from webapp import environment, wait_ready

EXAMPLES = int(os.environ.get("MLOPS_FUZZ_EXAMPLES", "10000"))
# Which formats can hold which modes (Pillow saves these without converting).
FORMATS = {
    "L": ["PNG", "JPEG", "BMP", "GIF", "WEBP"],
    "RGB": ["PNG", "JPEG", "BMP", "GIF", "WEBP"],
    "RGBA": ["PNG", "WEBP", "BMP"],
    "P": ["PNG", "GIF", "BMP"],
    "I;16": ["PNG"],
    "CMYK": ["JPEG"],
}


@st.composite
def images(draw) -> bytes:
    # Mostly small, sometimes large: large ones cost a decode each on the server.
    side = st.one_of(
        st.integers(1, 64), st.integers(1, 64), st.integers(1, 64), st.integers(65, 600)
    )
    large = draw(st.integers(0, 39)) == 0
    width = draw(st.integers(601, 4000) if large else side)
    height = draw(st.integers(601, 4000) if large else side)
    mode = draw(st.sampled_from(list(FORMATS)))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    if mode == "I;16":
        canvas = Image.new("I", (width, height), draw(st.integers(0, 65535)))
        ink = draw(st.integers(0, 65535))
    else:
        canvas = Image.new("RGB" if mode in ("P", "CMYK") else mode, (width, height))
        bands = len(canvas.getbands())
        canvas.paste(tuple(draw(st.integers(0, 255)) for _ in range(bands)), (0, 0, width, height))
        ink = tuple(draw(st.integers(0, 255)) for _ in range(bands))
    pen = ImageDraw.Draw(canvas)
    for _ in range(draw(st.integers(0, 4))):
        # Coordinates may fall on or past the edges.
        x0, x1 = sorted(draw(st.integers(-width // 4, width + width // 4)) for _ in range(2))
        y0, y1 = sorted(draw(st.integers(-height // 4, height + height // 4)) for _ in range(2))
        shape = draw(st.sampled_from(["line", "rectangle", "ellipse"]))
        if shape == "line":
            pen.line([(x0, y0), (x1, y1)], fill=ink, width=draw(st.integers(1, 40)))
        else:
            getattr(pen, shape)([x0, y0, x1, y1], fill=ink)
    if width * height <= 256 * 256 and draw(st.booleans()):
        noise = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        array = np.asarray(canvas)
        spread = 65535 if mode == "I;16" else 255
        noisy = np.clip(array + noise.normal(0, spread * 0.1, array.shape), 0, spread)
        canvas = Image.fromarray(noisy.astype(array.dtype), canvas.mode)
    if mode == "I;16":
        canvas = Image.fromarray(np.asarray(canvas, dtype=np.uint16))
    elif mode in ("P", "CMYK"):
        canvas = canvas.convert(mode)
    buffer = io.BytesIO()
    canvas.save(buffer, format=fmt)
    data = buffer.getvalue()
    if draw(st.integers(0, 9)) == 0:  # now and then, a truncated file
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    return data


def fuzz(web, services, examples: int) -> tuple[Counter, set[str]]:
    """Send `examples` generated uploads; assert no 5xx, a JSON error with each 4xx, and a
    row per accepted upload and an object per distinct accepted file, nothing more."""
    outcomes: Counter = Counter()
    accepted: set[str] = set()
    rows_before, objects_before = stored(web, services)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.one_of(images(), images(), images(), st.binary(max_size=4096)))
    def send(data: bytes) -> None:
        answer = web.post("/api/v1/predict", files={"file": ("upload", data)})
        outcomes[answer.status_code] += 1
        assert answer.status_code < 500, (answer.status_code, answer.text, data[:64])
        if answer.status_code == 200:
            accepted.add(hashlib.sha256(data).hexdigest())
        else:
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.json()["error"]

    send()
    rows_after, objects_after = stored(web, services)
    print(f"\n{sum(outcomes.values())} generated uploads: {dict(sorted(outcomes.items()))}")
    # A row per accepted upload, an object per accepted file, nothing else. Generated files
    # may repeat earlier ones (Hypothesis starts from the simplest): those are stored already.
    assert rows_after - rows_before == outcomes[200], "a refused upload left a row"
    assert objects_after - objects_before <= accepted, "a refused upload left an object"
    assert accepted <= objects_after, "an accepted upload was never stored"
    return outcomes, accepted


def test_generated_uploads_never_get_a_5xx_and_a_4xx_stores_nothing(web, services):
    fuzz(web, services, EXAMPLES)


@pytest.fixture
def shadowing(web, services, production_model):
    """A candidate shadowing production: production's model under a new version number."""
    from mlflow import MlflowClient
    from mlops_flows import tracking

    with environment(services.client_env("worker")):
        client = MlflowClient()
        source = f"models:/mnist/{production_model.version}"
        candidate = client.copy_model_version(source, "mnist").version
        tracking.start_shadow(client, "mnist", candidate)
    try:
        wait_ready(web, shadow_version=candidate)
        yield candidate
    finally:
        with environment(services.client_env("worker")):
            client.delete_registered_model_alias("mnist", tracking.CANDIDATE)
        wait_ready(web, shadow_version=None)


def test_generated_uploads_while_a_candidate_shadows(web, services, shadowing):
    """The candidate runs on what production runs on, hostile files included: still no 5xx,
    nothing stored for a 4xx, and each accepted upload carries the candidate's digit."""
    with psycopg.connect(web.env["MLOPS_DATABASE_URL"]) as conn:
        (newest,) = conn.execute("SELECT coalesce(max(id), 0) FROM uploads").fetchone()
    outcomes, _ = fuzz(web, services, max(EXAMPLES // 10, 100))
    with psycopg.connect(web.env["MLOPS_DATABASE_URL"]) as conn:
        shadowed = conn.execute(
            "SELECT count(*) FROM uploads WHERE id > %s AND shadow_model_version = %s"
            " AND shadow_predicted_label BETWEEN 0 AND 9",
            (newest, shadowing),
        ).fetchone()[0]
    assert shadowed == outcomes[200], f"{shadowed} of {outcomes[200]} accepted were shadowed"
