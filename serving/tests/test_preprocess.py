"""Real photos and drawings come out as MNIST-like 28x28 images (no services needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from mlops_serving.preprocess import ImageRejected, prepare
from PIL import Image, ImageDraw, ImageFilter


def mnist_like_seven() -> np.ndarray:
    """A white 7 on black, 28x28."""
    image = Image.new("L", (280, 280), 0)
    draw = ImageDraw.Draw(image)
    draw.line([(50, 50), (230, 50), (120, 230)], fill=255, width=28)
    return np.asarray(image.resize((28, 28), Image.Resampling.LANCZOS), dtype=np.uint8)


def photo_of(
    pixels: np.ndarray, size: int, paper=(236, 230, 214), ink=(30, 35, 60), fmt="JPEG"
) -> bytes:
    """The digit as dark ink on off-white paper, large, slightly blurred and noisy, in colour."""
    big = (
        Image.fromarray(pixels)
        .resize((size, size), Image.Resampling.BICUBIC)
        .filter(ImageFilter.GaussianBlur(2))
    )
    alpha = np.asarray(big, dtype=np.float32)[..., None] / 255
    rgb = np.array(paper) * (1 - alpha) + np.array(ink) * alpha
    rgb += np.random.default_rng(0).normal(0, 6, rgb.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def clean(pixels: np.ndarray) -> np.ndarray:
    """The digit as a large clean white-on-black PNG, normalised: what a photo of it must give."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((280, 280), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return prepare(buffer.getvalue()).pixels


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_a_photo_of_a_dark_digit_on_paper_looks_like_mnist(fmt):
    seven = mnist_like_seven()
    prepared = prepare(photo_of(seven, 900, fmt=fmt))
    assert prepared.inverted is True
    assert prepared.pixels.shape == (28, 28)
    assert similarity(prepared.pixels, clean(seven)) > 0.9
    assert np.median(prepared.pixels) == 0, "the background (paper) must come out black"


def test_light_on_dark_is_not_inverted_and_any_size_works():
    seven = mnist_like_seven()
    buffer = io.BytesIO()
    Image.fromarray(seven).resize((61, 61)).save(buffer, format="PNG")
    prepared = prepare(buffer.getvalue())
    assert prepared.inverted is False
    assert similarity(prepared.pixels, clean(seven)) > 0.95


def test_a_transparent_canvas_drawing_works():
    seven = mnist_like_seven()
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[..., 3] = np.asarray(Image.fromarray(seven).resize((280, 280)))
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    assert similarity(prepare(buffer.getvalue()).pixels, clean(seven)) > 0.95


def test_the_digit_is_fitted_in_20x20_and_centred_by_mass():
    small = np.zeros((100, 300), np.uint8)
    small[40:60, 10:40] = 255  # a small, off-centre blob
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, format="PNG")
    pixels = prepare(buffer.getvalue()).pixels.astype(np.float64)
    rows, cols = np.flatnonzero(pixels.any(1)), np.flatnonzero(pixels.any(0))
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) <= 21
    ys, xs = np.indices(pixels.shape)
    assert abs((ys * pixels).sum() / pixels.sum() - 13.5) <= 1
    assert abs((xs * pixels).sum() / pixels.sum() - 13.5) <= 1


def test_an_image_already_in_mnist_format_is_kept_as_it_is():
    seven = mnist_like_seven()
    buffer = io.BytesIO()
    Image.fromarray(seven).save(buffer, format="PNG")
    assert np.array_equal(prepare(buffer.getvalue()).pixels, seven)


def test_an_animated_gif_uses_its_first_frame():
    seven = mnist_like_seven()
    big = Image.fromarray(seven).resize((140, 140))
    frames = [big, Image.new("L", big.size, 0)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert similarity(prepare(buffer.getvalue()).pixels, clean(seven)) > 0.95


@pytest.mark.parametrize(
    ("data", "status"),
    [(b"", 400), (b"plain text, not an image", 400), (b"GIF89a\x01\x00\x01\x00", 400)],
    ids=["empty", "text", "truncated-gif"],
)
def test_unreadable_input_is_rejected(data, status):
    with pytest.raises(ImageRejected) as caught:
        prepare(data)
    assert caught.value.status == status


def test_a_blank_page_has_no_digit():
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), (250, 250, 250)).save(buffer, format="JPEG")
    with pytest.raises(ImageRejected, match="no digit") as caught:
        prepare(buffer.getvalue())
    assert caught.value.status == 422


def test_too_many_pixels_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000), 0).save(buffer, format="PNG")
    with pytest.raises(ImageRejected) as caught:
        prepare(buffer.getvalue(), max_pixels=1_000_000)
    assert caught.value.status == 413


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_ink_touching_the_border_is_a_digit_not_a_crash():
    """Both once answered 500: the border's noise estimate swallowed all the ink."""
    half_black = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(half_black).rectangle([0, 0, 39, 99], fill=0)
    band_and_stroke = Image.new("L", (200, 200), 255)
    draw = ImageDraw.Draw(band_and_stroke)
    draw.rectangle([0, 0, 199, 30], fill=0)
    draw.line([(100, 30), (100, 190)], fill=0, width=14)
    for image in (half_black, band_and_stroke):
        prepared = prepare(png(image))
        assert prepared.pixels.shape == (28, 28) and prepared.pixels.max() == 255


def test_16_bit_grey_is_scaled_not_clipped():
    """A dark digit on mid-grey 16-bit paper: clipping at 255 made the whole image white."""
    pixels = np.full((120, 120), 40000, dtype=np.uint16)
    pixels[30:90, 55:65] = 8000  # a dark "1"
    prepared = prepare(png(Image.fromarray(pixels)))
    eight_bit = pixels // 257
    reference = prepare(png(Image.fromarray(eight_bit.astype(np.uint8))))
    assert np.abs(prepared.pixels.astype(int) - reference.pixels.astype(int)).max() <= 2
    assert prepared.pixels.max() == 255


def test_a_large_jpeg_decodes_at_a_reduced_size():
    from mlops_serving.preprocess import probe

    photo = Image.new("RGB", (4000, 3000), (235, 235, 230))
    ImageDraw.Draw(photo).line([(2000, 600), (2000, 2400)], fill=(20, 20, 20), width=160)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=85)
    found = probe(buffer.getvalue(), 25_000_000)
    # DCT scaling: 1/2 still leaves more than 1024 px on the long side, 1/4 does not.
    assert found.decode_pixels == 4000 * 3000 // 4
    prepared = prepare(buffer.getvalue())
    assert prepared.pixels.max() >= 250
