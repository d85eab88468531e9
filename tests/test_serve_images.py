"""diva_tf.serving.images: image sizes from headers (Pillow's full decode is the reference), the
per-image and per-request pixel limits, and the server-wide budget of pixels being decoded."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from diva_tf.serving.errors import BadRequest
from diva_tf.serving.images import PixelBudget, image_pixels, request_pixels


def encoded(fmt: str, size=(37, 23), mode="RGB", **options) -> bytes:
    channels = len(mode) if mode != "L" else 1
    pixels = np.random.RandomState(5).randint(0, 256, (size[1], size[0], channels)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(), mode).save(buf, fmt, **options)
    return buf.getvalue()


def animated_gif(frames: int) -> bytes:
    images = [Image.new("RGB", (37, 23), (40 * i, 0, 0)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:])
    return buf.getvalue()


def with_app1_thumbnail(jpeg: bytes) -> bytes:
    """An APP1 segment holding a start-of-frame of another size (as EXIF thumbnails do)."""
    fake_sof = b"\xff\xc0\x00\x11\x08" + (999).to_bytes(2, "big") * 2 + b"\x03" + b"\x00" * 9
    payload = b"Exif\x00\x00" + fake_sof
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


CASES = {  # id -> encoded image of the formats tf.io.decode_image reads
    "png": lambda: encoded("PNG"), "png-grey": lambda: encoded("PNG", mode="L"),
    "jpeg": lambda: encoded("JPEG"), "jpeg-progressive": lambda: encoded("JPEG", progressive=True),
    "jpeg-app1-thumbnail": lambda: with_app1_thumbnail(encoded("JPEG")),
    "gif": lambda: encoded("GIF"), "bmp": lambda: encoded("BMP"),
    "webp-lossy": lambda: encoded("WEBP"), "webp-lossless": lambda: encoded("WEBP", lossless=True),
    "webp-alpha": lambda: encoded("WEBP", mode="RGBA"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_size_from_the_header_equals_the_decoded_size(case):
    data = CASES[case]()
    with Image.open(io.BytesIO(data)) as image:
        decoded = np.asarray(image.convert("RGB")).shape
    assert image_pixels(data) == (decoded[1], decoded[0], 1) == (37, 23, 1)


def test_every_frame_of_an_animated_gif_counts():
    data = animated_gif(3)
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 3
    assert image_pixels(data) == (37, 23, 3)


@pytest.mark.parametrize("data", [b"", b"plain text", encoded("JPEG")[:4],
                                  b"\x89PNG\r\n\x1a\n\x00", encoded("TIFF")],
                         ids=["empty", "text", "jpeg-cut-in-its-header", "png-cut-in-its-header",
                              "tiff"])
def test_what_the_model_cannot_decode_is_refused(data):
    with pytest.raises(BadRequest):
        image_pixels(data)


def test_an_8000_pixel_square_png_of_a_few_kb_is_counted_without_decoding():
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    assert image_pixels(buf.getvalue()) == (8000, 8000, 1)


def test_request_limits():
    small, large = encoded("PNG", size=(10, 10)), encoded("PNG", size=(30, 20))
    assert request_pixels([small, large], 0, 0) == 100 + 600
    assert request_pixels([small, large], 600, 700) == 700
    with pytest.raises(BadRequest, match=r"^image 1: 30x20 = 600 pixels exceeds "
                                         r"--max_image_pixels=599$"):
        request_pixels([small, large], 599, 0)
    with pytest.raises(BadRequest, match="hold 700 pixels, over --max_request_pixels=699"):
        request_pixels([small, large], 0, 699)
    with pytest.raises(BadRequest, match="^image 0: not a"):
        request_pixels([b"text", small], 0, 0)


def test_the_budget_bounds_pixels_held_at_once():
    """Requests of 60, 60, 30 and 150 (over the whole budget) pixels against a budget of 100:
    at no time do more than 100 (or one oversized request alone) hold it, and all finish."""
    budget, held, peak, order = PixelBudget(100), [0], [0], []

    async def request(name, pixels):
        async with budget.hold(pixels):
            held[0] += min(pixels, 100)
            peak[0] = max(peak[0], held[0])
            await asyncio.sleep(0.01)
            held[0] -= min(pixels, 100)
            order.append(name)

    async def main():
        await asyncio.gather(*(request(n, p) for n, p in
                               (("a", 60), ("b", 60), ("c", 30), ("d", 150))))

    asyncio.run(main())
    assert sorted(order) == ["a", "b", "c", "d"] and peak[0] <= 100 and budget.free == 100


def test_no_budget_at_zero():
    async def main():
        async with PixelBudget(0).hold(10**12):
            return True

    assert asyncio.run(main())
