"""``images.thumbnail``: sizes, formats, EXIF orientation, alpha, and refused inputs."""

from __future__ import annotations

import hashlib
import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from PIL import Image, ImageDraw

from tasks.arguments import ThumbnailArguments, ThumbnailFormat
from tasks.base import JobContext
from tasks.cpu.thumbnails import (
    Thumbnail,
    fitted_size,
    make_thumbnails,
    store_thumbnails,
    thumbnail,
)
from tasks.errors import PermanentError
from workers.blob_store import BlobStore

FORMATS: list[ThumbnailFormat] = ["webp", "jpeg", "png"]
PILLOW_NAMES = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG"}
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def encoded(image: Image.Image, pillow_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **options)
    return buffer.getvalue()


def halves(
    size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str
) -> Image.Image:
    image = Image.new(mode, size, left)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=right)
    return image


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def thumbnails_of(
    data: bytes, boxes: list[tuple[int, int]], output: ThumbnailFormat
) -> list[Thumbnail]:
    return list(make_thumbnails(io.BytesIO(data), boxes, output))


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width`` x ``height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    image = halves((2000, 1500), RED, BLUE, "RGB")
    ImageDraw.Draw(image).ellipse((600, 400, 1400, 1100), fill=(0, 160, 0))
    return encoded(image, "JPEG", quality=90)


# --- fitted_size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("original", "box", "expected"),
    [
        ((2000, 1500), (200, 200), (200, 150)),
        ((1500, 2000), (200, 200), (150, 200)),
        ((2000, 1500), (640, 480), (640, 480)),
        ((2000, 1500), (100, 50), (67, 50)),
        ((2000, 1500), (4000, 4000), (2000, 1500)),  # never enlarged
        ((100, 50), (200, 200), (100, 50)),
        ((400, 300), (400, 300), (400, 300)),
        ((10_000, 1), (100, 100), (100, 1)),  # never below one pixel
        ((1, 10_000), (100, 100), (1, 100)),
        ((10_000, 10), (100, 100), (100, 1)),
    ],
)
def test_fitted_size(
    original: tuple[int, int], box: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert fitted_size(original, box) == expected


@pytest.mark.parametrize("box", [(1, 1), (37, 91), (300, 2), (999, 999), (4096, 4096)])
def test_fitted_size_stays_in_the_box_and_keeps_the_aspect_ratio(box: tuple[int, int]) -> None:
    original = (1234, 567)

    width, height = fitted_size(original, box)

    assert width <= box[0] and height <= box[1]
    assert width <= original[0] and height <= original[1]
    assert width == box[0] or height == box[1] or (width, height) == original
    # each side is the scaled side give or take half a pixel, so the cross products of
    # the two ratios differ by at most half the sum of the original's sides
    assert abs(width * original[1] - height * original[0]) <= sum(original) / 2


# --- make_thumbnails -----------------------------------------------------------------------


@pytest.mark.parametrize("output", FORMATS)
def test_large_jpeg_into_every_format(large_jpeg: bytes, output: ThumbnailFormat) -> None:
    boxes = [(200, 200), (640, 480), (100, 50), (4000, 4000)]

    made = thumbnails_of(large_jpeg, boxes, output)

    expected = [(200, 150), (640, 480), (67, 50), (2000, 1500)]
    assert [(t.width, t.height) for t in made] == expected
    for made_one, size in zip(made, expected, strict=True):
        image = decoded(made_one.data)
        assert image.format == PILLOW_NAMES[output]
        assert image.size == size
        assert image.mode in ("RGB", "RGBA")


def test_thumbnail_content_is_the_scaled_picture(large_jpeg: bytes) -> None:
    [small] = thumbnails_of(large_jpeg, [(200, 200)], "png")
    image = decoded(small.data).convert("RGB")

    assert close_to(image.getpixel((5, 5)), RED)  # type: ignore[arg-type]
    assert close_to(image.getpixel((195, 5)), BLUE)  # type: ignore[arg-type]
    assert close_to(image.getpixel((100, 75)), (0, 160, 0))  # type: ignore[arg-type]


def test_exif_orientation_six_turns_the_thumbnail_upright() -> None:
    # stored 300x200, left half red; orientation 6 shows it turned a quarter clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(halves((300, 200), RED, BLUE, "RGB"), "JPEG", exif=exif, quality=95)

    [made] = thumbnails_of(data, [(100, 100)], "png")

    image = decoded(made.data).convert("RGB")
    assert (made.width, made.height) == (67, 100)
    assert image.size == (67, 100)
    assert close_to(image.getpixel((33, 10)), RED)  # type: ignore[arg-type]
    assert close_to(image.getpixel((33, 90)), BLUE)  # type: ignore[arg-type]


def test_exif_orientation_one_keeps_the_picture_as_stored() -> None:
    exif = Image.Exif()
    exif[0x0112] = 1
    data = encoded(halves((300, 200), RED, BLUE, "RGB"), "JPEG", exif=exif, quality=95)

    [made] = thumbnails_of(data, [(100, 100)], "png")

    assert (made.width, made.height) == (100, 67)


def test_rgba_png_to_jpeg_is_flattened_onto_white() -> None:
    data = encoded(halves((100, 100), (0, 0, 0, 0), (*RED, 255), "RGBA"), "PNG")

    [made] = thumbnails_of(data, [(100, 100)], "jpeg")

    image = decoded(made.data)
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert close_to(image.getpixel((10, 50)), (255, 255, 255))  # type: ignore[arg-type]
    assert close_to(image.getpixel((90, 50)), RED)  # type: ignore[arg-type]


@pytest.mark.parametrize("output", ["webp", "png"])
def test_rgba_png_keeps_its_alpha(output: ThumbnailFormat) -> None:
    data = encoded(halves((100, 100), (0, 0, 0, 0), (*RED, 255), "RGBA"), "PNG")

    [made] = thumbnails_of(data, [(50, 50)], output)

    image = decoded(made.data)
    assert image.mode == "RGBA"
    alpha = image.getchannel("A")
    assert alpha.getpixel((5, 25)) == 0
    assert alpha.getpixel((45, 25)) == 255


def test_palette_gif_transparency_is_kept_in_webp() -> None:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(image).rectangle((20, 0, 40, 40), fill=1)
    data = encoded(image, "GIF", transparency=0)

    [made] = thumbnails_of(data, [(40, 40)], "webp")

    alpha = decoded(made.data).getchannel("A")
    assert alpha.getpixel((5, 20)) == 0
    assert alpha.getpixel((35, 20)) == 255


def test_opaque_image_to_webp_has_no_alpha_channel(large_jpeg: bytes) -> None:
    [made] = thumbnails_of(large_jpeg, [(64, 64)], "webp")

    assert decoded(made.data).mode == "RGB"


# --- refused inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"this is not an image", b"%PDF-1.7\n" + b"0" * 100, b"\x89PNG\r\n\x1a\n"]
)
def test_non_image_bytes_are_permanent(data: bytes) -> None:
    with pytest.raises(PermanentError, match=r"not an image Pillow can read \(accepted: JPEG"):
        thumbnails_of(data, [(10, 10)], "png")


def test_an_image_format_outside_the_accepted_list_is_refused() -> None:
    ppm = encoded(Image.new("RGB", (10, 10), RED), "PPM")

    with pytest.raises(PermanentError, match="not an image Pillow can read"):
        thumbnails_of(ppm, [(10, 10)], "png")


def test_decompression_bomb_is_refused_without_allocating_it() -> None:
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 100

    tracemalloc.start()
    try:
        with pytest.raises(PermanentError, match="possible decompression bomb"):
            thumbnails_of(bomb, [(100, 100)], "png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


def test_image_between_the_warning_and_error_limits_is_refused_too() -> None:
    # 10000 x 10000 is above Pillow's limit but below twice the limit: only a warning there
    assert Image.MAX_IMAGE_PIXELS is not None
    assert Image.MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS

    with pytest.raises(PermanentError, match="possible decompression bomb"):
        thumbnails_of(png_declaring(10_000, 10_000), [(100, 100)], "png")


@pytest.mark.parametrize("keep", [0.5, 0.8])
def test_truncated_jpeg_is_permanent(large_jpeg: bytes, keep: float) -> None:
    truncated = large_jpeg[: int(len(large_jpeg) * keep)]

    with pytest.raises(PermanentError, match="image cannot be decoded: image file is truncated"):
        thumbnails_of(truncated, [(100, 100)], "webp")


def cut_inside_the_frame_header() -> bytes:
    data = encoded(Image.new("RGB", (300, 200), RED), "JPEG")
    return data[: data.index(b"\xff\xc0") + 5]


def cut_in_half(pillow_format: str) -> bytes:
    data = encoded(Image.effect_noise((300, 200), 50).convert("RGB"), pillow_format)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "make_data",
    [cut_inside_the_frame_header, lambda: cut_in_half("PNG"), lambda: cut_in_half("WEBP")],
    ids=["jpeg-frame-header", "png-half", "webp-half"],
)
def test_image_cut_short_elsewhere_is_permanent(make_data: Callable[[], bytes]) -> None:
    with pytest.raises(PermanentError, match="image cannot be decoded"):
        thumbnails_of(make_data(), [(100, 100)], "png")


@pytest.mark.parametrize("pillow_format", ["GIF", "TIFF"])
def test_other_truncated_images_are_permanent(pillow_format: str) -> None:
    with pytest.raises(PermanentError, match="image cannot be decoded"):
        thumbnails_of(cut_in_half(pillow_format), [(100, 100)], "png")


# --- store_thumbnails and the task -------------------------------------------------------


def test_store_thumbnails_stores_each_one(tmp_path: Path, large_jpeg: bytes) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    source = blobs.store([large_jpeg], max_bytes=len(large_jpeg))

    stored = store_thumbnails(blobs, source.blob, [(200, 200), (50, 50)], "jpeg")

    assert [(s["width"], s["height"]) for s in stored] == [(200, 150), (50, 38)]
    for entry in stored:
        blob = entry["blob"]
        assert isinstance(blob, str)
        with blobs.open(blob) as file:
            data = file.read()
        assert blob == f"sha256:{hashlib.sha256(data).hexdigest()}"
        assert decoded(data).size == (entry["width"], entry["height"])


def test_store_thumbnails_of_a_missing_blob_is_permanent(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    missing = f"sha256:{hashlib.sha256(b'absent').hexdigest()}"

    with pytest.raises(PermanentError, match=f"no blob {missing}"):
        store_thumbnails(blobs, missing, [(10, 10)], "png")
    assert not (blobs.root / "sha256").exists()


def test_thumbnail_task_result(tmp_path: Path, large_jpeg: bytes) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    source = blobs.store([large_jpeg], max_bytes=len(large_jpeg))
    context = cast(JobContext, SimpleNamespace(blobs=blobs))
    arguments = ThumbnailArguments.model_validate(
        {"blob": source.blob, "sizes": [[120, 120], [30, 90]], "format": "webp"}
    )

    result = thumbnail(context, arguments)

    entries = result["thumbnails"]
    assert isinstance(entries, list)
    assert len(entries) == 2
    for entry, box in zip(entries, [(120, 120), (30, 90)], strict=True):
        assert isinstance(entry, dict)
        width, height = entry["width"], entry["height"]
        assert isinstance(width, int) and isinstance(height, int)
        expected = fitted_size((2000, 1500), box)
        # the sizes come from the JPEG's reduced decode, which can round a pixel differently
        assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1
        assert width <= box[0] and height <= box[1]
        blob = entry["blob"]
        assert isinstance(blob, str)
        with blobs.open(blob) as file:
            assert decoded(file.read()).size == (width, height)
