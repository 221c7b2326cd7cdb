"""``images.thumbnail``: fit an image into several boxes, EXIF orientation applied.

Pillow's decompression-bomb limit is enforced as an error, not a warning; anything that
is not a readable image fails the job at once with a message saying why.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import JsonValue

from tasks.arguments import ThumbnailArguments, ThumbnailFormat
from tasks.base import JobContext
from tasks.declaration import conveyor_task
from tasks.errors import PermanentError
from workers.blob_store import BlobNotFoundError, BlobStore

Size = tuple[int, int]
#: The input formats accepted; others are refused before any decoder runs.
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ENCODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "webp": ("WEBP", {"quality": 80, "method": 4}),
    "jpeg": ("JPEG", {"quality": 85, "optimize": True, "progressive": True}),
    "png": ("PNG", {"optimize": False}),
}
_ORIENTATION_TAG = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_MAX_THUMBNAIL_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Thumbnail:
    """One encoded thumbnail."""

    width: int
    height: int
    data: bytes


def fitted_size(original: Size, box: Size) -> Size:
    """The largest size with ``original``'s aspect ratio inside ``box``; never enlarged."""
    width, height = original
    scale = min(box[0] / width, box[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


@contextmanager
def opened_image(file: IO[bytes]) -> Iterator[Image.Image]:
    """``file`` opened by Pillow, or ``PermanentError`` for a non-image or a bomb."""
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice the limit; both are refused here
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file, formats=INPUT_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise PermanentError(
                f"image refused as a possible decompression bomb: {error}"
            ) from None
        except UnidentifiedImageError:
            raise PermanentError(
                "blob is not an image Pillow can read (accepted: " + ", ".join(INPUT_FORMATS) + ")"
            ) from None
        except (OSError, SyntaxError, ValueError) as error:
            # a header cut short or corrupt: no retry can repair the blob
            raise PermanentError(f"image cannot be decoded: {error}") from None
    with image:
        yield image


def _upright_size(image: Image.Image) -> Size:
    try:
        # for PNG this reads up to the EXIF chunk, which may lie past a truncation
        orientation = image.getexif().get(_ORIENTATION_TAG)
    except (OSError, SyntaxError, ValueError) as error:
        raise PermanentError(f"image cannot be decoded: {error}") from None
    width, height = image.size
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def _decoded_upright(image: Image.Image, largest: Size, swapped: bool) -> Image.Image:
    # JPEG can decode at 1/2, 1/4 or 1/8 scale straight away: much less work for thumbnails
    image.draft("RGB", (largest[1], largest[0]) if swapped else largest)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise PermanentError(f"image cannot be decoded: {error}") from None
    return ImageOps.exif_transpose(image)


def _for_format(image: Image.Image, output: ThumbnailFormat) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if output == "jpeg" or not has_alpha:
        if has_alpha:
            # JPEG has no alpha: flatten onto white rather than let transparent pixels go black
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return image if image.mode == "RGB" else image.convert("RGB")
    return image if image.mode == "RGBA" else image.convert("RGBA")


def encode(image: Image.Image, output: ThumbnailFormat) -> bytes:
    """``image`` encoded in ``output``."""
    pillow_format, options = _ENCODERS[output]
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **options)
    return buffer.getvalue()


def make_thumbnails(
    file: IO[bytes], boxes: list[tuple[int, int]], output: ThumbnailFormat
) -> Iterator[Thumbnail]:
    """One thumbnail per box, in the order of ``boxes``."""
    with opened_image(file) as image:
        upright = _upright_size(image)
        swapped = upright != image.size
        largest = max((fitted_size(upright, box) for box in boxes), key=lambda s: s[0] * s[1])
        source = _for_format(_decoded_upright(image, largest, swapped), output)
        for box in boxes:
            # from the original size: a reduced (drafted) decode must not change the answer
            size = fitted_size(upright, box)
            resized = (
                source
                if size == source.size
                else source.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            )
            yield Thumbnail(size[0], size[1], encode(resized, output))


def store_thumbnails(
    blobs: BlobStore, blob: str, boxes: list[tuple[int, int]], output: ThumbnailFormat
) -> list[dict[str, JsonValue]]:
    """Make the thumbnails of ``blob`` and store each one; their sizes and blob ids."""
    stored: list[dict[str, JsonValue]] = []
    try:
        with blobs.open(blob) as file:
            for thumbnail in make_thumbnails(file, boxes, output):
                saved = blobs.store([thumbnail.data], max_bytes=_MAX_THUMBNAIL_BYTES)
                stored.append(
                    {"width": thumbnail.width, "height": thumbnail.height, "blob": saved.blob}
                )
    except BlobNotFoundError:
        raise PermanentError(f"no blob {blob}") from None
    return stored


@conveyor_task("images.thumbnail")
def thumbnail(context: JobContext, arguments: ThumbnailArguments) -> dict[str, JsonValue]:
    """Fit the image into every box of ``sizes`` and store the results as blobs."""
    boxes = [(width, height) for width, height in arguments.sizes]
    stored = store_thumbnails(context.blobs, arguments.blob, boxes, arguments.format)
    return {"thumbnails": list[JsonValue](stored)}
