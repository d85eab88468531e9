"""What an image may cost the server, known before it is decoded. Pillow reads an encoded image's
size from its header (`Image.open(...).size` decodes no pixels); a request is refused when one
image or all of its images together are over their pixel limits, and a server-wide `PixelBudget`
bounds the pixels being decoded at once, so memory stays bounded whatever clients send (a 100 KB
PNG can decode to gigabytes)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import warnings

from PIL import Image

from diva_tf.serving.errors import BadRequest

# The formats `tf.io.decode_image` reads (Pillow names): anything else fails in the graph anyway.
DECODABLE = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may cost (0 = no limit)."""

    max_request_bytes: int = 64 << 20
    max_image_pixels: int = 40_000_000  # one image, read from its header before decoding
    max_request_pixels: int = 40_000_000  # all images of one request
    max_decoding_pixels: int = 40_000_000  # all requests being decoded at once, per process


def image_pixels(data: bytes) -> tuple[int, int, int]:
    """(width, height, frames) from the header; BadRequest when it is no image the model decodes.
    Frames count because the graph decodes every frame of an animated GIF."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in DECODABLE:
                    raise BadRequest(f"a {image.format} image: the model decodes "
                                     f"{'/'.join(DECODABLE)} only")
                return (*image.size, getattr(image, "n_frames", 1))
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit (~179 Mpx)
        raise BadRequest(str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise BadRequest(f"not a {'/'.join(DECODABLE)} image (or its header is cut short)"
                         ) from None


def request_pixels(images: list[bytes], max_image_pixels: int, max_request_pixels: int) -> int:
    """Decoded pixels of a request's images, checked against the limits (0 = none)."""
    total = 0
    for i, data in enumerate(images):
        try:
            width, height, frames = image_pixels(data)
        except BadRequest as e:
            raise BadRequest(f"image {i}: {e}") from None
        pixels = width * height * frames
        if max_image_pixels and pixels > max_image_pixels:
            raise BadRequest(f"image {i}: {width}x{height}" + (f"x{frames} frames" if frames > 1
                             else "") + f" = {pixels} pixels exceeds --max_image_pixels="
                             f"{max_image_pixels}")
        total += pixels
    if max_request_pixels and total > max_request_pixels:
        raise BadRequest(f"the request's {len(images)} images hold {total} pixels, over "
                         f"--max_request_pixels={max_request_pixels}: send fewer per request")
    return total


class PixelBudget:
    """At most `capacity` pixels being decoded at once, over all requests of a server process
    (0 = no limit). A request waits until its pixels fit; one larger than the whole budget waits
    for all of it (so it still runs, alone)."""

    def __init__(self, capacity: int):
        self.capacity = self.free = capacity
        self._changed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int):
        if not self.capacity:
            yield
            return
        if self._changed is None:  # made in the event loop that uses it
            self._changed = asyncio.Condition()
        share = min(pixels, self.capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= share)
            self.free -= share
        try:
            yield
        finally:
            async with self._changed:
                self.free += share
                self._changed.notify_all()
